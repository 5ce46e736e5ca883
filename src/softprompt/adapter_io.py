"""Adapter files: PEFT's layout, safetensors and JSON only, written atomically.

An adapter folder holds
- adapter_config.json        the method's config, PEFT field names;
- adapter_model.safetensors  one tensor, `prompt_embeddings` [P, D]: the prompt collapsed to its table;
- prompt_source.safetensors  (training checkpoints only) every parameter of the prompt source, encoders
                             included, so training resumes exactly. PEFT ignores this file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import huggingface_hub
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import AdapterError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
SOURCE_NAME = "prompt_source.safetensors"
TABLE_KEY = "prompt_embeddings"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a file so that readers see the old or the new content, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def write_folder_atomically(directory: str | os.PathLike, write_into) -> None:
    """Call `write_into(staging_dir)`, then swap the staging folder in place of `directory`.

    A crash at any point leaves either the old folder or the new one, complete. Files in an
    existing folder that the new one does not write are carried over.
    """
    directory = Path(directory).absolute()
    if directory.exists() and not directory.is_dir():
        raise AdapterError(f"Cannot save the adapter to {directory}: it is a file. Choose a folder path.")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.saving-", dir=directory.parent))
    try:
        write_into(staging)
        if directory.exists():
            for entry in directory.iterdir():  # keep the user's other files
                if (staging / entry.name).exists():
                    continue
                if entry.is_dir():
                    shutil.copytree(entry, staging / entry.name)
                else:
                    shutil.copy2(entry, staging / entry.name)
            retired = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(directory, retired)
            os.replace(staging, directory)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def local_or_hub_file(location: str | os.PathLike, filename: str, required: bool = True, **hub_kwargs) -> Path | None:
    """Path of `filename` in an adapter folder, or downloaded from a hub repo of that name."""
    folder = Path(location)
    if folder.is_dir():
        path = folder / filename
        if path.is_file():
            return path
        if not required:
            return None
        hint = ""
        if filename == WEIGHTS_NAME and (folder / "adapter_model.bin").exists():
            hint = (
                " It has adapter_model.bin, a pickle file, which softprompt never loads (pickles can run code). "
                "Convert it once, in a trusted environment, with PEFT: load it and call save_pretrained() "
                "(which writes safetensors)."
            )
        raise AdapterError(
            f"No {filename} in adapter folder {folder}.{hint} Is this the folder save_pretrained() wrote?"
        )
    if os.path.exists(location) or str(location).count("/") > 1 or str(location).startswith((".", "/", "~")):
        raise AdapterError(f"Adapter folder {location} does not exist. Pass the folder that save_pretrained() wrote.")
    try:
        return Path(huggingface_hub.hf_hub_download(str(location), filename, **hub_kwargs))
    except Exception as error:  # offline, missing repo, missing file: all the same to the user
        if not required:
            return None
        raise AdapterError(
            f"{location!r} is not a local folder and could not be fetched from the Hugging Face Hub "
            f"({type(error).__name__}: {error}). Pass the local adapter folder, or check the repo id and network."
        ) from error


def read_adapter_config(location: str | os.PathLike, **hub_kwargs) -> dict:
    path = local_or_hub_file(location, CONFIG_NAME, **hub_kwargs)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AdapterError(f"{path} is not valid JSON ({error}). The adapter is damaged: save it again.") from error
    if not isinstance(data, dict):
        raise AdapterError(f"{path} must hold a JSON object, found {type(data).__name__}. The adapter is damaged.")
    return data


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise AdapterError(
            f"{path} is not a readable safetensors file ({error}). The adapter is damaged: save it again."
        ) from error


def read_adapter_tensors(location: str | os.PathLike, **hub_kwargs) -> dict[str, torch.Tensor]:
    """Every tensor of adapter_model.safetensors; it must hold the prompt table `prompt_embeddings`."""
    path = local_or_hub_file(location, WEIGHTS_NAME, **hub_kwargs)
    tensors = read_tensors(path)
    if TABLE_KEY not in tensors:
        raise AdapterError(
            f"{path} has no tensor '{TABLE_KEY}' (found: {sorted(tensors)}). It is not a prompt-learning adapter."
        )
    return tensors


def read_adapter_table(location: str | os.PathLike, **hub_kwargs) -> torch.Tensor:
    return read_adapter_tensors(location, **hub_kwargs)[TABLE_KEY]


def read_prompt_source(location: str | os.PathLike, **hub_kwargs) -> dict[str, torch.Tensor] | None:
    path = local_or_hub_file(location, SOURCE_NAME, required=False, **hub_kwargs)
    return None if path is None else read_tensors(path)


def upload_folder(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload prompt adapter",
) -> str:
    """Upload an adapter folder's files to a Hub repo as one commit (all files or none). Returns the commit URL."""
    try:
        api = huggingface_hub.HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
    except Exception as error:
        raise ConnectionError(
            f"Could not push the adapter to the Hugging Face Hub repo {repo_id!r} ({type(error).__name__}: {error}). "
            "Nothing was uploaded (the upload is a single commit). Check your network and login "
            "(`hf auth login` or token=...), or keep it local with save_pretrained()."
        ) from error
    return str(getattr(commit, "commit_url", commit))
