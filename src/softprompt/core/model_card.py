"""An adapter's model card (README.md), as PEFT writes one on save and push: the Hub's metadata (base model,
library, pipeline) that links the adapter to its base model, what the adapter is, its task and training figures
when known, and how to load it with softprompt and with PEFT. A README.md the user wrote is never replaced."""

from __future__ import annotations

import json
from pathlib import Path

from .. import adapter_io
from ..config import PromptLearningConfig
from ..data import TaskSpec, read_task
from ..version import __version__

CARD_NAME = "README.md"
PLACEHOLDER = "PATH_OR_HUB_ID"  # where the card names the adapter until it is pushed (then: the repo id)
MARKER = "<!-- written by softprompt when the adapter is saved; delete this line to keep your own edits -->"
PIPELINES = {"CAUSAL_LM": "text-generation", "SEQ_CLS": "text-classification", "TOKEN_CLS": "token-classification",
             "SEQ_2_SEQ_LM": "text2text-generation", "FEATURE_EXTRACTION": "feature-extraction"}  # fmt: skip
PEFT_AUTO = {"CAUSAL_LM": "AutoPeftModelForCausalLM", "SEQ_CLS": "AutoPeftModelForSequenceClassification",
             "TOKEN_CLS": "AutoPeftModelForTokenClassification", "SEQ_2_SEQ_LM": "AutoPeftModelForSeq2SeqLM",
             "FEATURE_EXTRACTION": "AutoPeftModelForFeatureExtraction"}  # fmt: skip


def render(
    config: PromptLearningConfig,
    parameters: int,
    task: TaskSpec | None = None,
    metrics: dict | None = None,
    location: str = PLACEHOLDER,
    trained_as=None,
) -> str:
    """The card's text. `parameters`: what the adapter file holds; `metrics`: the last training line, if any;
    `location`: how readers name the adapter (a folder or Hub repo); `trained_as`: the method that trained it, when
    its file is another's (a residual prompt saved as a prompt-tuning table)."""
    method = str(getattr(config.peft_type, "value", config.peft_type))
    trained = str(getattr(trained_as, "value", trained_as or method))
    title = f"{method.replace('_', ' ').lower()} adapter" if location == PLACEHOLDER else location
    lines = metadata(config, method) + [f"# {title}", ""]
    lines += [
        f"A {method} adapter for {config.base_model_name_or_path or 'its base model'} (task type {config.task_type}), "
        f"trained with softprompt {__version__}"
        + (f" by {trained} (saved as its {method} table)" if trained != method else "")
        + f": {config.num_virtual_tokens} virtual tokens, {parameters:,d} parameters in its file.",
        "",
    ]
    if task is not None:
        lines += task_section(task)
    if metrics:
        shown = ", ".join(
            f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}" for key, value in metrics.items()
        )
        lines += ["## Training", "", f"The last epoch's figures: {shown}.", ""]
    return "\n".join(lines + usage(config, method, location, classifies=task is not None))


def metadata(config: PromptLearningConfig, method: str) -> list[str]:
    """The YAML header the Hub reads: base model (its link), library, pipeline, tags."""
    base, pipeline = config.base_model_name_or_path, PIPELINES.get(config.task_type)
    tags = ["softprompt", "peft", method.lower().replace("_", "-")] + ([f"base_model:adapter:{base}"] if base else [])
    lines = ["---"] + ([f"base_model: {base}"] if base else []) + ["library_name: peft"]
    lines += [f"pipeline_tag: {pipeline}"] if pipeline else []
    return lines + ["tags:"] + [f"- {tag}" for tag in tags] + ["---", MARKER, ""]


def task_section(task: TaskSpec) -> list[str]:
    names = [name for name in task.label_names or [] if name.strip().lower() != "unlabeled"]
    lines = ["## Task", "", f"Classes: {', '.join(names)}.", f"Template: `{json.dumps(task.prompt_template())}`."]
    if task.verbalizer:
        lines.append(f"Label words: {json.dumps({name: task.label_text(name) for name in names})}.")
    return lines + [""]


def usage(config: PromptLearningConfig, method: str, location: str, classifies: bool) -> list[str]:
    """How to load it with softprompt, and with PEFT where PEFT runs what softprompt runs."""
    call = 'predictor.classify(["some text"])' if classifies else 'predictor.generate(["some text"])'
    lines = ["## Use", "", "With softprompt (`pip install softprompt`):", "", "```python"]
    lines += ["from softprompt import Predictor", "", f'predictor = Predictor.from_pretrained("{location}")', call]
    lines += ["```", ""]
    reason = config.peft_reads_it()
    if reason is not None:
        return lines + [f"PEFT cannot run this adapter as softprompt does: {reason}.", ""]
    auto = PEFT_AUTO.get(config.task_type, "AutoPeftModel")
    lines += [f"With PEFT (`pip install peft`), which reads this file as its own {method} adapter:", "", "```python"]
    return lines + [f"from peft import {auto}", "", f'model = {auto}.from_pretrained("{location}")', "```", ""]


def keeps_own_card(folder: Path) -> bool:
    """True when the folder holds a README.md that softprompt did not write (it is left as it is)."""
    card = Path(folder) / CARD_NAME
    return card.is_file() and MARKER not in card.read_text(errors="replace")


def card_for_upload(folder: Path, location: str) -> str | None:
    """The card an adapter folder is uploaded with as `location` (a Hub repo id): softprompt's own card naming the
    repo, or one written from the folder's files when it has none; None when the user wrote the folder's card."""
    card = Path(folder) / CARD_NAME
    if keeps_own_card(folder):
        return None
    if card.is_file():
        return card.read_text().replace(PLACEHOLDER, location)
    config = PromptLearningConfig.from_pretrained(folder)
    parameters = sum(t.numel() for t in adapter_io.read_tensors(Path(folder) / adapter_io.WEIGHTS_NAME).values())
    return render(config, parameters, read_task(folder, required=False), location=location)
