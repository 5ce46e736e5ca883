"""FSDP2 (torch.distributed.fsdp.fully_shard) on 2 CPU processes with gloo: the prompt's gradient, reduced over
the ranks' halves of a batch, equals the single-process gradient on the whole batch, and inference after the
step sees the stepped prompt.

The wrapper is the fully_shard root (the decoder layers are their own units): its forward gathers the root's
parameters (embeddings, head, prompt) before the prompt runs through the model, so nothing sharded is ever
used outside a forward. Every trainable adapter is added before sharding (after, it is refused).

The last test runs softprompt.Trainer under `accelerate launch --use_fsdp --fsdp_version 2` (accelerate's own
sharding of the layers, embeddings and root): checkpoints hold the adapters and the optimizer's shards, not the
base; the result equals one process on the same rows; resuming from a checkpoint equals the straight run.
"""

import copy
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from fsdp_trainer_run import leave_without_teardown
from softprompt import PrefixTuningConfig, PromptTuningConfig, get_peft_model
from tiny_models import VOCAB, tiny_model

WORLD = 2
METHODS = {
    "prompt_tuning": lambda: PromptTuningConfig(num_virtual_tokens=4),
    "prefix_tuning": lambda: PrefixTuningConfig(num_virtual_tokens=4),
}


def full_batch():
    """4 unpadded rows: each rank's half has as many labels as the other, so the mean of the two halves'
    mean losses is the whole batch's mean loss."""
    ids = torch.randint(3, VOCAB, (2 * WORLD, 8), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def prompt_gradients(model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(**batch).loss.backward()
    grads = {}
    for name, p in model.prompt_encoder.named_parameters():
        grads[name] = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad  # a DTensor shard -> [P, D]
    return grads


def inputs(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


def step(model):
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()


def worker(rank: int, port: int) -> None:
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        batch = full_batch()
        half = {k: v[rank * 2 : rank * 2 + 2] for k, v in batch.items()}  # this rank's rows
        for method, config in METHODS.items():
            torch.manual_seed(0)  # the same model on every rank
            model = get_peft_model(tiny_model("llama_gqa"), config()).train()
            reference = copy.deepcopy(model)  # one process, the whole batch
            expected = prompt_gradients(reference, batch)
            step(reference)
            for layer in model.base_model.model.layers:
                fully_shard(layer)
            fully_shard(model)  # the wrapper is the root: prompt, embeddings and head
            assert hasattr(model.prompt_source.embedding.weight, "full_tensor")  # the prompt is sharded too
            with torch.no_grad():
                model.eval()(**inputs(half))  # inference before the step: no prompt states may outlive it
            got = prompt_gradients(model.train(), half)
            for name, grad in expected.items():
                assert grad.abs().sum() > 0, f"{method}: {name} has no gradient"
                torch.testing.assert_close(got[name], grad, atol=1e-5, rtol=1e-4, msg=f"{method}: {name}")
            assert all(p.grad is None for p in model.base_model.parameters())  # the base stays frozen
            step(model)
            with torch.no_grad():
                logits = model.eval()(**inputs(half)).logits
                torch.testing.assert_close(logits, reference.eval()(**inputs(half)).logits, atol=1e-4, rtol=1e-4)
        # a trainable prompt must exist before sharding, else FSDP would not reduce its gradients
        with pytest.raises(ValueError, match="before fully_shard"):
            model.add_adapter("late", PromptTuningConfig(num_virtual_tokens=2))
        base = tiny_model("llama_gqa")
        fully_shard(base)
        with pytest.raises(ValueError, match="before fully_shard"):
            get_peft_model(base, PromptTuningConfig(num_virtual_tokens=2))
    finally:
        dist.destroy_process_group()
    leave_without_teardown()  # a failed check raised above, and mp.spawn reports it


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_fsdp2_prompt_gradient_equals_the_single_process_gradient():
    mp.spawn(worker, args=(free_port(),), nprocs=WORLD, join=True)


# ---- the Trainer under `accelerate launch` with an FSDP2 config --------------------------------------------
def launch_fsdp_trainer(out, resume_from=None):
    """tests/fsdp_trainer_run.py on 2 processes: accelerate's FSDP2 preparation, softprompt.Trainer's saves."""
    launcher = Path(sys.executable).with_name("accelerate")
    command = [
        str(launcher),
        "launch",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "--use_fsdp",
        "--fsdp_version",
        "2",
        str(Path(__file__).with_name("fsdp_trainer_run.py")),
        str(out),
        *([str(resume_from)] if resume_from else []),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def saved_tensors(folder) -> dict[str, torch.Tensor]:
    return {
        f"{name}:{key}": value
        for name in ("adapter_model.safetensors", "prompt_source.safetensors")
        for key, value in load_file(Path(folder) / name).items()
    }


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_accelerate_fsdp_trainer_saves_adapters_only_equal_to_one_process_and_resumes_exactly(tmp_path):
    from fsdp_trainer_run import CASES, ROWS, STEPS, case_model
    from softprompt import Trainer
    from test_trainer import ADAPTER_FILES, arguments, rows

    launch_fsdp_trainer(tmp_path / "sharded")
    launch_fsdp_trainer(tmp_path / "resumed", resume_from=tmp_path / "sharded")
    for task, method in CASES:
        case = f"{task}-{method}"
        checkpoint = {path.name for path in (tmp_path / "sharded" / case / "checkpoint-1").iterdir()}
        assert ADAPTER_FILES <= checkpoint and "optimizer_0" in checkpoint, (case, checkpoint)
        assert not any("model_fsdp" in name or name.startswith("model") for name in checkpoint), (
            case,
            checkpoint,
        )  # no base
        # one process, the same 4 rows as one batch (the 2 ranks' batches of 2 are each step's whole data)
        model = case_model(task, method)
        Trainer(
            model=model,
            args=arguments(tmp_path / "single" / case, per_device_train_batch_size=ROWS, max_steps=STEPS),
            train_dataset=rows(task, ROWS),
        ).train()
        model.save_pretrained(tmp_path / "single" / case / "final", include_prompt_source=True)
        sharded, single = (
            saved_tensors(tmp_path / "sharded" / case / "final"),
            saved_tensors(tmp_path / "single" / case / "final"),
        )
        assert sharded.keys() == single.keys()
        for key in single:
            torch.testing.assert_close(sharded[key], single[key], atol=1e-5, rtol=1e-4, msg=f"{case} {key}")
        resumed = saved_tensors(
            tmp_path / "resumed" / case / "final"
        )  # from checkpoint-1: adapters, AdamW state, schedule
        for key in single:
            torch.testing.assert_close(resumed[key], sharded[key], atol=1e-6, rtol=0, msg=f"{case} {key} resumed")
