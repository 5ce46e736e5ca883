"""softprompt.Trainer under `accelerate launch` with an FSDP2 config, for tests/test_fsdp.py (not a test itself):

    accelerate launch --num_processes 2 --use_fsdp --fsdp_version 2 tests/fsdp_trainer_run.py OUT [RESUME_FROM]

Each case trains 2 steps on 4 rows (2 per rank), saving a checkpoint at each step and the adapters in
OUT/CASE/final. With RESUME_FROM, each case resumes from RESUME_FROM/CASE/checkpoint-1 instead.

accelerate turns FSDP on only for accelerator devices: on a CPU-only machine it silently runs plain
data parallel (DistributedType.MULTI_CPU) even when launched with --use_fsdp. To run its FSDP2 path here
(fsdp2_prepare_model: the layers, the embeddings and the wrapper as root sharded on gloo), this script
sets the distributed type to FSDP where accelerate would have on a GPU; nothing else is changed.
"""

import os
import sys
from pathlib import Path

import accelerate.state
import torch
from accelerate.utils import DistributedType

sys.path.insert(0, str(Path(__file__).parent))
from softprompt import Trainer
from test_trainer import arguments, make_model, rows
from tiny_models import without_dropout

CASES = [
    ("CAUSAL_LM", "prompt_tuning"),
    ("CAUSAL_LM", "prefix_tuning"),
    ("SEQ_CLS-llama", "p_tuning_mlp"),
    ("SEQ_CLS-bert", "prefix_tuning"),
]
ROWS, STEPS = 4, 2

_init = accelerate.state.AcceleratorState.__init__


def case_model(task: str, method: str):
    """test_trainer's model without dropout (BERT's), so that 2 ranks and 1 process see the same function."""
    return without_dropout(make_model(task, method))


def init_with_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type, self.fsdp_plugin = DistributedType.FSDP, fsdp_plugin


def main(out: Path, resume_from: Path | None) -> None:
    accelerate.state.AcceleratorState.__init__ = init_with_fsdp_on_cpu
    for task, method in CASES:
        case = f"{task}-{method}"
        model = case_model(task, method)
        args = arguments(
            out / case, per_device_train_batch_size=ROWS // 2, max_steps=STEPS, save_strategy="steps", save_steps=1
        )
        trainer = Trainer(model=model, args=args, train_dataset=rows(task, ROWS))
        assert trainer.is_fsdp_enabled, "accelerate did not take the FSDP config"
        trainer.train(resume_from_checkpoint=str(resume_from / case / "checkpoint-1") if resume_from else None)
        trainer.save_model(str(out / case / "final"))
    torch.distributed.barrier()  # leave together
    torch.distributed.destroy_process_group()
    leave_without_teardown()


def leave_without_teardown() -> None:
    """Exit 0 now, skipping the interpreter's teardown: on CPU, torch's gloo threads at times abort it ("terminate
    called without an active exception") after all the work is done, even with the process group destroyed, and
    the run then fails at random. Call it only once everything has passed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
