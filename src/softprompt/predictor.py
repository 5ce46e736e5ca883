"""Inference with trained prompts: one frozen base model, any number of adapters, each with its task.

    from softprompt import Predictor

    predictor = Predictor.from_pretrained({"complaints": "runs/pt/adapter", "hate": "me/hate-prompt"})
    predictor.classify(["my parcel never arrived"], adapter="complaints")
    # [{'adapter': 'complaints', 'label': 'complaint', 'probabilities': {'complaint': 0.91, 'no complaint': 0.09}}]
    predictor.classify(["my parcel never arrived", "you people are vile"], adapter=["complaints", "hate"])  # one batch
    predictor.generate(["Tweet: my parcel never arrived\nAnswer:"], adapter="complaints", max_new_tokens=5)

Inputs to `classify` are texts (the task's first text column) or rows (dicts of text columns); both go
through the adapter's template. `generate` takes the same rows through the template, but a plain text is
a complete prompt and is used as written: it is never wrapped in the template.
The CLI, the server and the benchmarks are thin layers over this class.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .calibration import calibrate, estimate_prior, read_calibration
from .config import PromptLearningConfig
from .data import DataError, Encoder, Example, pad_left, row_task_ids, sorted_batches
from .evaluate import classify_by_generation, score_rows
from .model import BASE_ADAPTER, PeftModel, PeftModelForCausalLM
from .task import MISSING_TASK_HINT, load_task
from .tasks import LabelScoring, task_kind

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def parse_dtype(dtype) -> torch.dtype | None:
    """None, a torch.dtype, or a name such as "float32", "bf16", "float16"."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).lower() not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}. Use one of {', '.join(DTYPES)}.")
    return DTYPES[str(dtype).lower()]


def parse_device(device) -> torch.device:
    """None or "auto": CUDA when there is one, else the CPU; otherwise any torch device string."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"Unknown device {device!r} ({error}). Use cpu, cuda, cuda:1, mps or auto.") from error


def name_adapters(adapters) -> dict[str, str]:
    """{name: location} from a dict, one location, or a list of them (named after their folders or repo ids)."""
    if isinstance(adapters, dict):
        return {str(name): str(location) for name, location in adapters.items()}
    locations = [adapters] if isinstance(adapters, (str, os.PathLike)) else list(adapters)
    names: dict[str, str] = {}
    for location in locations:
        path = Path(location)
        base = path.parent.name if path.name == "adapter" and path.parent.name else path.name  # runs/pt-42/adapter -> pt-42
        if not Path(location).exists() and str(location).count("/") == 1:
            base = str(location)  # a hub id keeps its owner
        base = (base or "adapter").replace(".", "-")
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names[name] = str(location)
    return names


class Predictor:
    """One frozen base model with several adapters and their tasks; label scoring, ensembles and generation."""

    def __init__(self, model: PeftModel, tokenizer, batch_size: int = 16):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.tasks: dict[str, Encoder | None] = {}  # adapter name -> its task (None: generation only)
        self.calibrations: dict[str, torch.Tensor] = {}  # adapter name -> class prior (calibration.json, or fit_calibration)
        self.use_calibration = True  # False: plain label scores even for calibrated adapters

    @classmethod
    def from_pretrained(
        cls, adapters, base_model: str | nn.Module | None = None, tokenizer=None, device=None, dtype=None, batch_size: int = 16,
        task: str | int | None = None,
    ) -> "Predictor":
        """Load adapters (folders or Hub ids; a dict names them) on the base model the first one names, loaded once.

        task: for adapters trained on several tasks (multitask prompt tuning), which one (name or task id) they classify.

        device: "cpu", "cuda", "auto" (default: CUDA if present); dtype: e.g. "float32" or "bfloat16"
        (default: as the model was saved).
        """
        from .models import load_base_model, load_tokenizer

        named = name_adapters(adapters)
        if not named:
            raise ValueError("Predictor needs at least one adapter (a folder written by softprompt train, or a Hub id).")
        first_name, first = next(iter(named.items()))
        if base_model is None or isinstance(base_model, (str, os.PathLike)):
            config = PromptLearningConfig.from_pretrained(first)
            base_name = str(base_model or config.base_model_name_or_path or "")
            if not base_name:
                raise ValueError(f"{first} does not name its base model: pass base_model=.")
            dtype = parse_dtype(dtype)
            kwargs = {"dtype": dtype} if dtype is not None else {}
            if config.task_type == "SEQ_CLS":  # a classifier with a head of the adapter's size
                from transformers import AutoModelForSequenceClassification

                from .seq_cls import head_labels

                kwargs.update(auto_class=AutoModelForSequenceClassification, num_labels=head_labels(first))
            base_model = load_base_model(base_name, **kwargs)
        elif dtype is not None:
            base_model = base_model.to(parse_dtype(dtype))
        base_model = base_model.to(parse_device(device))
        tokenizer = tokenizer or load_tokenizer(base_model.name_or_path)
        predictor = cls(PeftModelForCausalLM.from_pretrained(base_model, first, adapter_name=first_name), tokenizer, batch_size)
        predictor.tasks[first_name] = load_task(first, tokenizer, required=False, task=task)
        predictor.read_calibration(first, first_name)
        for name, location in list(named.items())[1:]:
            predictor.load_adapter(location, name, task=task)
        return predictor

    # ---- adapters ----------------------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        return list(self.model.peft_config)

    def load_adapter(self, location: str | os.PathLike, name: str | None = None, task: str | int | None = None) -> str:
        """Load one more adapter (and its task.json, if any) onto the same base model. Returns its name.
        `task`: for an adapter trained on several tasks, which one (name or task id) it classifies.

        A missing, damaged or wrong-model adapter is refused with the reason; the loaded ones are untouched.
        """
        name = name or next(iter(name_adapters([location])))
        task = load_task(location, self.tokenizer, required=False, task=task)  # read before anything changes (task: of several)
        self.model.load_adapter(location, name)
        self.tasks[name] = task
        self.calibrations.pop(name, None)
        self.read_calibration(location, name)
        ours = self.model.base_model.name_or_path
        theirs = self.model.peft_config[name].base_model_name_or_path
        if theirs and ours and theirs != ours:
            warnings.warn(f"Adapter {name!r} was trained on {theirs!r}; it fits, and runs on {ours!r}.")
        return name

    def unload_adapter(self, name: str) -> None:
        self.model.check_known(name)
        if len(self.model.peft_config) == 1:
            raise ValueError(f"{name!r} is the last adapter: a Predictor keeps at least one.")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "was active": the Predictor names adapters on every call
            self.model.delete_adapter(name)
        del self.tasks[name]
        self.calibrations.pop(name, None)

    # ---- calibration -------------------------------------------------------------------------
    def read_calibration(self, location, name: str) -> None:
        """Use the class prior stored with the adapter (calibration.json), if it has one."""
        task = self.tasks.get(name)
        prior = read_calibration(location, task.class_names if task is not None else None)
        if prior is not None:
            self.calibrations[name] = prior

    def fit_calibration(self, texts, adapter: str | None = None, progress: bool = False) -> torch.Tensor:
        """Estimate an adapter's class prior on unlabelled inputs (texts or rows) and use it from now on;
        returns the prior [K]. `softprompt.calibration.write_calibration` stores it with the adapter."""
        name = self.resolve(adapter)
        scores = self.scores(list(texts), name, progress)
        if not scores:
            raise ValueError("fit_calibration needs one or more unlabelled inputs.")
        prior = estimate_prior(torch.stack(scores).softmax(-1))
        self.calibrations[name] = prior
        return prior

    def class_probabilities(self, adapter: str, scores: torch.Tensor) -> torch.Tensor:
        """Class log-scores [..., K] of one adapter -> its class probabilities, calibrated by its prior if it has one."""
        probabilities = scores.softmax(-1)
        return calibrate(probabilities, self.calibrations.get(adapter) if self.use_calibration else None)

    def task(self, adapter: str | None = None) -> Encoder:
        name = self.resolve(adapter)
        if self.tasks[name] is None:
            raise ValueError(
                f"Adapter {name!r} has no task.json (template and labels), so it cannot classify; it can generate. "
                + MISSING_TASK_HINT
            )
        return self.tasks[name]

    def resolve(self, adapter: str | None) -> str:
        """An adapter name, checked; None means the only adapter (or the first loaded)."""
        if adapter is None:
            return self.adapter_names[0]
        self.model.check_known(adapter)
        return adapter

    def row_adapters(self, adapter, count: int, bare_model_allowed: bool = False) -> list[str | None]:
        """One adapter name per input from one name (or None: the first adapter) or a list of them;
        with `bare_model_allowed`, "__base__" stands for the bare base model (None)."""
        names = [adapter] * count if adapter is None or isinstance(adapter, str) else list(adapter)
        if len(names) != count:
            raise ValueError(f"adapter has {len(names)} names for {count} inputs: give one name, or one per input.")
        return [None if bare_model_allowed and name == BASE_ADAPTER else self.resolve(name) for name in names]

    # ---- inputs ------------------------------------------------------------------------------
    def examples(self, inputs, names: list[str]) -> list[Example]:
        """Texts or rows -> token ids through each row's adapter's template."""
        examples = []
        for n, (item, name) in enumerate(zip(inputs, names)):
            encoder = self.task(name)
            row = {encoder.spec.text_columns[0]: item} if isinstance(item, str) else item
            if not isinstance(row, dict):
                raise DataError(f"input {n}: expected a text or an object of text columns, got {type(item).__name__}.")
            examples.append(encoder.encode(row, "input", n, labelled=False))
        return examples

    # ---- classification ----------------------------------------------------------------------
    def scores(self, inputs, adapter=None, progress: bool = False) -> list[torch.Tensor]:
        """Log-likelihood of each class label per input: a list of [K] tensors (rows of different tasks differ in K)."""
        inputs = [inputs] if isinstance(inputs, (str, dict)) else list(inputs)
        names = self.row_adapters(adapter, len(inputs))
        if not inputs:
            return []
        return self.score_examples(self.examples(inputs, names), names, progress)

    def score_examples(self, examples: list[Example], names: list[str], progress: bool = False) -> list[torch.Tensor]:
        """Class log-scores of encoded rows, one adapter per row: label scoring in mixed-adapter batches, or a
        classification head (one adapter a batch, each has its own head)."""
        kinds = {name: task_kind(self.task(name).spec.task_type) for name in set(names)}
        if any(kind is not LabelScoring for kind in kinds.values()):
            results: list = [None] * len(examples)
            for name, kind in kinds.items():
                rows = [i for i, n in enumerate(names) if n == name]
                scores = kind.class_log_scores(self.model, self.task(name), [examples[i] for i in rows], self.batch_size, progress, name)
                for i, row in zip(rows, scores):
                    results[i] = row
            return results
        targets = {name: [self.task(name).target_ids(k) for k in range(len(self.task(name).class_names))] for name in set(names)}
        scores = score_rows(
            self.model, [e.prompt_ids for e in examples], [targets[name] for name in names], self.tokenizer.pad_token_id,
            names, self.batch_size, progress, row_task_ids(examples),
        )  # [N, max K]
        return [row[: len(targets[name])] for row, name in zip(scores, names)]

    def probabilities(self, inputs, adapter: str | None = None, progress: bool = False) -> torch.Tensor:
        """Class probabilities [N, K] of one adapter's task (order: `self.task(adapter).class_names`),
        calibrated by the adapter's class prior when it has one (see softprompt.calibration)."""
        name = self.resolve(adapter)
        rows = self.scores(inputs, name, progress)
        return self.class_probabilities(name, torch.stack(rows)) if rows else torch.empty(0, len(self.task(adapter).class_names))

    def ensemble_probabilities(self, inputs, adapters: list[str], progress: bool = False) -> torch.Tensor:
        """The mean of several adapters' class probabilities [N, K] (e.g. seeds of one config), on one base model.

        Each member reads the inputs through its own template; all must have the same classes.
        """
        adapters = [self.resolve(name) for name in adapters]
        first = self.task(adapters[0]).class_names
        for name in adapters[1:]:
            if self.task(name).class_names != first:
                raise ValueError(
                    f"Adapter {name!r} has classes {self.task(name).class_names}, but {adapters[0]!r} has {first}: "
                    "an ensemble needs adapters trained for the same labels."
                )
        return torch.stack([self.probabilities(inputs, name, progress) for name in adapters]).mean(0)

    def classify(self, inputs, adapter=None, ensemble: list[str] | None = None, method: str = "scoring", progress: bool = False) -> list[dict]:
        """Label and class probabilities per input: [{"adapter", "label", "probabilities": {class: p}}, ...].

        adapter: one name for every input, or one per input (any mix of tasks in one call).
        ensemble: average these adapters' probabilities instead (same classes).
        method "generation": greedy text mapped to a label (label None if it names none; no probabilities).
        """
        inputs = [inputs] if isinstance(inputs, (str, dict)) else list(inputs)
        if ensemble:
            if method != "scoring":
                raise ValueError("An ensemble averages label scores: use method='scoring'.")
            probabilities = self.ensemble_probabilities(inputs, ensemble, progress)
            names = [self.resolve(ensemble[0])] * len(inputs)
            return [self.prediction(name, p, "+".join(ensemble)) for name, p in zip(names, probabilities)]
        names = self.row_adapters(adapter, len(inputs))
        if method == "generation":
            return self.classify_by_generation(inputs, names, progress)
        if method != "scoring":
            raise ValueError(f"method must be 'scoring' or 'generation', got {method!r}.")
        scores = self.scores(inputs, names, progress)
        return [self.prediction(name, self.class_probabilities(name, s), name) for name, s in zip(names, scores)]

    def prediction(self, name: str, probabilities: torch.Tensor, shown: str) -> dict:
        classes = self.task(name).class_names
        return {
            "adapter": shown,
            "label": classes[int(probabilities.argmax())],
            "probabilities": {c: float(p) for c, p in zip(classes, probabilities)},
        }

    def classify_by_generation(self, inputs, names: list[str], progress: bool) -> list[dict]:
        results: list[dict] = [{} for _ in inputs]
        for name in dict.fromkeys(names):
            rows = [i for i, n in enumerate(names) if n == name]
            encoder = self.task(name)
            predicted, texts = classify_by_generation(
                self.model, encoder, self.examples([inputs[i] for i in rows], [name] * len(rows)), self.batch_size, progress, name
            )
            for i, label, text in zip(rows, predicted, texts):
                results[i] = {"adapter": name, "label": encoder.class_names[label] if label >= 0 else None, "generated": text}
        return results

    # ---- generation --------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, inputs, adapter=None, max_new_tokens: int = 20, **generate_kwargs) -> list[str]:
        """New text after each input. A text is the whole prompt, used as written; a row (dict of text columns)
        is filled into its adapter's template first. `adapter`: one name, one per input, or None for the
        first adapter; "__base__" runs the bare model. Other arguments go to transformers' `generate`
        (do_sample, temperature, top_p, num_beams...; greedy by default)."""
        inputs = [inputs] if isinstance(inputs, (str, dict)) else list(inputs)
        names = self.row_adapters(adapter, len(inputs), bare_model_allowed=True)
        prompts = [
            self.tokenizer(item)["input_ids"] if isinstance(item, str) else self.examples([item], [name])[0].prompt_ids
            for item, name in zip(inputs, names)
        ]
        return self.generate_ids(prompts, names, max_new_tokens=max_new_tokens, **generate_kwargs)

    def generate_ids(self, prompts: list[list[int]], names: list[str | None], skip_special_tokens: bool = True, **generate_kwargs) -> list:
        """Batched generation from token ids, one adapter (or None) per row; returns the decoded new text
        (a list of texts per prompt with num_return_sequences > 1)."""
        count = generate_kwargs.get("num_return_sequences") or 1
        completions = self.complete(prompts, names, skip_special_tokens=skip_special_tokens, **generate_kwargs)
        texts = [c.text for c in completions]
        return texts if count == 1 else [texts[i * count : (i + 1) * count] for i in range(len(prompts))]

    @torch.no_grad()
    def complete(
        self,
        prompts: list[list[int]],
        names: list[str | None],
        max_new_tokens: int = 20,
        stop: list[str] | None = None,
        on_token=None,
        should_stop=None,
        skip_special_tokens: bool = True,
        **generate_kwargs,
    ) -> list["Completion"]:
        """Generation from token ids with what an API reports: text (cut before a stop string), new token
        count, and why it ended ("stop": EOS or a stop string; "length": max_new_tokens). Rows are batched
        by length, one adapter (or None) per row. `on_token(token_id)` streams (one prompt only);
        `should_stop()` returning True ends generation early (e.g. the client went away)."""
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        generate_kwargs.setdefault("do_sample", False)
        generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        if not generate_kwargs["do_sample"]:  # greedy: drop sampling settings the model's config may carry
            for name in ("temperature", "top_p", "top_k"):
                generate_kwargs.setdefault(name, None)
        if stop:
            generate_kwargs.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        if should_stop is not None:
            class Cancelled(StoppingCriteria):
                def __call__(self, input_ids, scores, **kwargs):
                    return torch.full((input_ids.shape[0],), bool(should_stop()), device=input_ids.device)

            generate_kwargs["stopping_criteria"] = StoppingCriteriaList([Cancelled()])
        if on_token is not None:
            if len(prompts) != 1:
                raise ValueError("Streaming generates one prompt at a time.")

            class Streamer(BaseStreamer):
                started = False

                def put(self, value):
                    if self.started:  # the first call carries the prompt
                        for token in value.reshape(-1).tolist():
                            on_token(token)
                    self.started = True

                def end(self):
                    pass

            generate_kwargs["streamer"] = Streamer()
        count = generate_kwargs.get("num_return_sequences") or 1
        eos = self.eos_ids(generate_kwargs.get("eos_token_id"))
        results: list = [None] * (len(prompts) * count)
        device = self.model.device
        for batch in sorted_batches([len(p) for p in prompts], self.batch_size):
            input_ids = pad_left([prompts[i] for i in batch], self.tokenizer.pad_token_id).to(device)
            attention_mask = pad_left([[1] * len(prompts[i]) for i in batch], 0).to(device)
            tasks = self.task_ids([names[i] for i in batch])
            output = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, adapter_names=[names[i] for i in batch],
                max_new_tokens=max_new_tokens, **({} if tasks is None else {"task_ids": tasks}), **generate_kwargs,
            )
            for row, new in enumerate(output[:, input_ids.shape[1] :].tolist()):
                i = batch[row // count]
                results[i * count + row % count] = self.completion(new, eos, stop, max_new_tokens, len(prompts[i]), skip_special_tokens)
        return results

    def task_ids(self, names: list[str | None]) -> list[int] | None:
        """The task id each row's adapter runs with (the task chosen at load for a multitask adapter); None if all are
        the adapters' only tasks."""
        chosen = [getattr(self.tasks.get(name), "spec", None) if name is not None else None for name in names]
        ids = [None if spec is None else spec.task_id for spec in chosen]
        return None if all(i is None for i in ids) else [i or 0 for i in ids]

    def eos_ids(self, given=None) -> set[int]:
        """The token ids that end a generation: `given`, else the base model's (a classifier has no generation config)."""
        if given is None:
            settings = getattr(self.model.base_model, "generation_config", None) or self.model.base_model.config
            given = settings.eos_token_id
        return set(given if isinstance(given, (list, tuple)) else [given]) - {None}

    def completion(self, new: list[int], eos: set, stop, max_new_tokens: int, prompt_tokens: int, skip_special_tokens: bool):
        pad = self.tokenizer.pad_token_id
        while new and pad not in eos and new[-1] == pad:  # a row stopped early (stop string) is padded
            new = new[:-1]
        ended = next((n for n, token in enumerate(new) if token in eos), None)
        tokens = new if ended is None else new[:ended]
        text = self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)
        cut = min((text.find(s) for s in stop or [] if s and s in text), default=-1)
        if cut >= 0:
            text = text[:cut]
        finished = ended is not None or cut >= 0 or len(tokens) < max_new_tokens
        return Completion(text, len(tokens) + (ended is not None), "stop" if finished else "length", prompt_tokens)


@dataclass
class Completion:
    """One generated continuation: its text, how many tokens it took (EOS included), why it ended."""

    text: str
    completion_tokens: int
    finish_reason: str  # "stop" (EOS, a stop string, or cancelled) or "length"
    prompt_tokens: int
