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
from pathlib import Path

import torch
from torch import nn

from .. import base_models, registry
from ..config import PromptLearningConfig
from ..core import BASE_ADAPTER, PeftModel
from ..data import MISSING_TASK_HINT, DataError, Example, RowTokenizer, load_task
from ..task_types.base import TaskBehaviour
from . import generation
from .calibration import DEFAULT_LIMIT, calibrate, estimate_prior, read_calibration, read_texts, write_calibration


def name_adapters(adapters) -> dict[str, str]:
    """{name: location} from a dict, one location, or a list of them (named after their folders or repo ids)."""
    if isinstance(adapters, dict):
        return {str(name): str(location) for name, location in adapters.items()}
    locations = [adapters] if isinstance(adapters, (str, os.PathLike)) else list(adapters)
    names: dict[str, str] = {}
    for location in locations:
        path = Path(location)
        base = (
            path.parent.name if path.name == "adapter" and path.parent.name else path.name
        )  # runs/pt-42/adapter -> pt-42
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
        self.tasks: dict[str, RowTokenizer | None] = {}  # adapter name -> its task (None: generation only)
        self.calibrations: dict[
            str, torch.Tensor
        ] = {}  # adapter name -> class prior (calibration.json, or fit_calibration)
        self.use_calibration = True  # False: plain label scores even for calibrated adapters

    @classmethod
    def from_pretrained(
        cls,
        adapters,
        base_model: str | nn.Module | None = None,
        tokenizer=None,
        device=None,
        dtype=None,
        batch_size: int = 16,
        task: str | int | None = None,
    ) -> Predictor:
        """Load adapters (folders or Hub ids; a dict names them) on the base model the first one names, loaded once.

        task: for adapters trained on several tasks (multitask prompt tuning), which one (name or task id) they
        classify.

        device: "cpu", "cuda", "auto" (default: CUDA if present); dtype: e.g. "float32" or "bfloat16"
        (default: as the model was saved).
        """
        named = name_adapters(adapters)
        if not named:
            raise ValueError(
                "Predictor needs at least one adapter (a folder written by softprompt train, or a Hub id)."
            )
        first_name, first = next(iter(named.items()))
        if base_model is None or isinstance(base_model, (str, os.PathLike)):
            config = PromptLearningConfig.from_pretrained(first)
            base_name = str(base_model or config.base_model_name_or_path or "")
            if not base_name:
                raise ValueError(f"{first} does not name its base model: pass base_model=.")
            entry = registry.task_type(config.task_type)
            options = entry.wrapper.base_model_options(first)  # e.g. a head of the adapter's size
            dtype = base_models.parse_dtype(dtype)
            if dtype is not None:
                options["dtype"] = dtype
            base_model = base_models.load_base_model(base_name, auto_class=entry.auto_model, **options)
        elif dtype is not None:
            base_model = base_model.to(base_models.parse_dtype(dtype))
        base_model = base_model.to(base_models.parse_device(device))
        tokenizer = tokenizer or base_models.load_tokenizer(base_model.name_or_path)
        predictor = cls(PeftModel.from_pretrained(base_model, first, adapter_name=first_name), tokenizer, batch_size)
        predictor.tasks[first_name] = predictor.read_task(
            first, predictor.model.peft_config[first_name].task_type, task
        )
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
        config = PromptLearningConfig.from_pretrained(location)
        spec = self.read_task(location, config.task_type, task)  # read before anything changes (task: of several)
        self.model.load_adapter(location, name)
        self.tasks[name] = spec
        self.calibrations.pop(name, None)
        self.read_calibration(location, name)
        ours = self.model.base_model.name_or_path
        theirs = self.model.peft_config[name].base_model_name_or_path
        if theirs and ours and theirs != ours:
            warnings.warn(f"Adapter {name!r} was trained on {theirs!r}; it fits, and runs on {ours!r}.", stacklevel=2)
        return name

    def read_task(self, location, task_type: str | None, task: str | int | None) -> RowTokenizer | None:
        """An adapter's task.json as a RowTokenizer that writes labels as its task type does (None: it has none)."""
        behaviour = registry.task_type(task_type).behaviour
        return load_task(
            location, self.tokenizer, label_words=behaviour is None or behaviour.label_words, required=False, task=task
        )

    def unload_adapter(self, name: str) -> None:
        self.model.check_known(name)
        if len(self.model.peft_config) == 1:
            raise ValueError(f"{name!r} is the last adapter: a Predictor keeps at least one.")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "was active": the Predictor names adapters on every call
            self.model.delete_adapter(name)
        del self.tasks[name]
        self.calibrations.pop(name, None)

    def behaviour(self, adapter: str) -> TaskBehaviour:
        """How an adapter's task type classifies rows (label scoring, a head)."""
        return registry.task_type(self.model.peft_config[self.resolve(adapter)].task_type).require_behaviour(
            "classification"
        )

    # ---- calibration -------------------------------------------------------------------------
    def read_calibration(self, location, name: str) -> None:
        """Use the class prior stored with the adapter (calibration.json), if it has one."""
        task = self.tasks.get(name)
        prior = read_calibration(location, task.class_names if task is not None else None)
        if prior is not None:
            self.calibrations[name] = prior

    def fit_calibration(self, texts, adapter: str | None = None, progress: bool = False) -> torch.Tensor:
        """Estimate an adapter's class prior on unlabelled inputs (texts or rows) and use it from now on;
        returns the prior [K]. `softprompt.inference.calibration.write_calibration` stores it with the adapter."""
        name = self.resolve(adapter)
        scores = self.scores(list(texts), name, progress)
        if not scores:
            raise ValueError("fit_calibration needs one or more unlabelled inputs.")
        prior = estimate_prior(torch.stack(scores).softmax(-1))
        self.calibrations[name] = prior
        return prior

    def class_probabilities(self, adapter: str, scores: torch.Tensor) -> torch.Tensor:
        """Class log-scores [..., K] of one adapter -> its class probabilities, calibrated by its prior if it
        has one."""
        probabilities = scores.softmax(-1)
        return calibrate(probabilities, self.calibrations.get(adapter) if self.use_calibration else None)

    def row_tokenizer(self, adapter: str | None = None) -> RowTokenizer:
        """An adapter's task as a RowTokenizer: its template, class names (`.class_names`) and label words."""
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
            task = self.row_tokenizer(name)
            row = {task.spec.text_columns[0]: item} if isinstance(item, str) else item
            if not isinstance(row, dict):
                raise DataError(f"input {n}: expected a text or an object of text columns, got {type(item).__name__}.")
            examples.append(task.encode(row, "input", n, labelled=False))
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
        """Class log-scores of encoded rows, one adapter per row: in mixed-adapter batches where the task type
        allows it (label scoring), else one adapter a batch (a classification head: each has its own)."""
        behaviours = {name: self.behaviour(name) for name in set(names)}
        kinds = {type(behaviour) for behaviour in behaviours.values()}
        if len(kinds) == 1 and next(iter(behaviours.values())).mixes_adapters:
            behaviour = next(iter(behaviours.values()))
            return behaviour.mixed_class_log_scores(
                self.model,
                examples,
                [self.row_tokenizer(name) for name in names],
                names,
                self.tokenizer.pad_token_id,
                self.batch_size,
                progress,
            )
        results: list = [None] * len(examples)
        for name, behaviour in behaviours.items():
            rows = [i for i, n in enumerate(names) if n == name]
            scores = behaviour.class_log_scores(
                self.model, self.row_tokenizer(name), [examples[i] for i in rows], self.batch_size, progress, name
            )
            for i, row in zip(rows, scores):
                results[i] = row
        return results

    def probabilities(self, inputs, adapter: str | None = None, progress: bool = False) -> torch.Tensor:
        """Class probabilities [N, K] of one adapter's task (order: `self.row_tokenizer(adapter).class_names`),
        calibrated by the adapter's class prior when it has one (see softprompt.inference.calibration)."""
        name = self.resolve(adapter)
        rows = self.scores(inputs, name, progress)
        return (
            self.class_probabilities(name, torch.stack(rows))
            if rows
            else torch.empty(0, len(self.row_tokenizer(adapter).class_names))
        )

    def ensemble_probabilities(self, inputs, adapters: list[str], progress: bool = False) -> torch.Tensor:
        """The mean of several adapters' class probabilities [N, K] (e.g. seeds of one config), on one base model.

        Each member reads the inputs through its own template; all must have the same classes.
        """
        adapters = [self.resolve(name) for name in adapters]
        first = self.row_tokenizer(adapters[0]).class_names
        for name in adapters[1:]:
            if self.row_tokenizer(name).class_names != first:
                raise ValueError(
                    f"Adapter {name!r} has classes {self.row_tokenizer(name).class_names}, but {adapters[0]!r} has "
                    f"{first}: "
                    "an ensemble needs adapters trained for the same labels."
                )
        return torch.stack([self.probabilities(inputs, name, progress) for name in adapters]).mean(0)

    def classify(
        self, inputs, adapter=None, ensemble: list[str] | None = None, method: str = "scoring", progress: bool = False
    ) -> list[dict]:
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
        classes = self.row_tokenizer(name).class_names
        return {
            "adapter": shown,
            "label": classes[int(probabilities.argmax())],
            "probabilities": {c: float(p) for c, p in zip(classes, probabilities)},
        }

    def classify_by_generation(self, inputs, names: list[str], progress: bool) -> list[dict]:
        results: list[dict] = [{} for _ in inputs]
        for name in dict.fromkeys(names):
            behaviour = self.behaviour(name)
            if not behaviour.generates:
                raise ValueError(
                    f"Adapter {name!r} classifies with a head; it does not generate labels: use method='scoring'."
                )
            rows = [i for i, n in enumerate(names) if n == name]
            task = self.row_tokenizer(name)
            predicted, texts = behaviour.classify_by_generation(
                self.model,
                task,
                self.examples([inputs[i] for i in rows], [name] * len(rows)),
                self.batch_size,
                progress,
                name,
            )
            for i, label, text in zip(rows, predicted, texts):
                results[i] = {
                    "adapter": name,
                    "label": task.class_names[label] if label >= 0 else None,
                    "generated": text,
                }
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

    def generate_ids(
        self, prompts: list[list[int]], names: list[str | None], skip_special_tokens: bool = True, **generate_kwargs
    ) -> list:
        """Batched generation from token ids, one adapter (or None) per row; returns the decoded new text
        (a list of texts per prompt with num_return_sequences > 1)."""
        count = generate_kwargs.get("num_return_sequences") or 1
        completions = self.complete(prompts, names, skip_special_tokens=skip_special_tokens, **generate_kwargs)
        texts = [c.text for c in completions]
        return texts if count == 1 else [texts[i * count : (i + 1) * count] for i in range(len(prompts))]

    def complete(self, prompts: list[list[int]], names: list[str | None], **options) -> list[generation.Completion]:
        """Generation from token ids with what an API reports (text, token count, finish reason); rows are batched
        by length, one adapter (or None) per row. Options: see `generation.complete` (max_new_tokens, stop,
        on_token, should_stop, and transformers' generate arguments)."""
        if not self.model.generates:
            raise ValueError(
                f"The adapters' task type ({type(self.model).__name__}) does not generate text: classify with them."
            )
        return generation.complete(
            self.model, self.tokenizer, prompts, names, self.task_ids(names), self.batch_size, **options
        )

    def task_ids(self, names: list[str | None]) -> list[int] | None:
        """The task id each row's adapter runs with (the task chosen at load for a multitask adapter); None if all are
        the adapters' only tasks."""
        chosen = [getattr(self.tasks.get(name), "spec", None) if name is not None else None for name in names]
        ids = [None if spec is None else spec.task_id for spec in chosen]
        return None if all(i is None for i in ids) else [i or 0 for i in ids]

    def eos_ids(self, given=None) -> set[int]:
        """The token ids that end a generation: `given`, else the base model's."""
        return generation.eos_ids(self.model, given)


def calibrate_adapter_folder(
    adapter_dir: str | os.PathLike,
    texts_file=None,
    column: str | None = None,
    limit: int | None = DEFAULT_LIMIT,
    device=None,
    base_model: str | None = None,
    dtype=None,
    texts: list[str] | None = None,
) -> torch.Tensor:
    """Estimate a saved adapter's class prior on unlabelled texts and store it in its folder (calibration.json): the
    `texts` given, or a column of `texts_file` (default: the task's first text column; `limit`: a seeded sample)."""
    predictor = Predictor.from_pretrained(str(adapter_dir), base_model=base_model, device=device, dtype=dtype)
    predictor.use_calibration = False
    task = predictor.row_tokenizer()
    if texts is None:
        texts = read_texts(texts_file, column or task.spec.text_columns[0], limit, field="texts_file")
    prior = predictor.fit_calibration(texts)
    write_calibration(adapter_dir, task.class_names, prior, str(texts_file or "texts"), len(texts))
    return prior
