"""`softprompt info` and `softprompt push`: an adapter folder's contents, and uploading it."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from ..adapter_io import read_adapter_config, read_adapter_table, upload_folder
from ..core.model_card import CARD_NAME, card_for_upload
from ..data import TASK_NAME, read_task
from .options import HelpFormatter, option


def add_commands(commands) -> None:
    info = commands.add_parser("info", help="method, base model and sizes of an adapter", formatter_class=HelpFormatter)
    info.add_argument("adapter", help="an adapter folder (or Hub repo)")
    info.set_defaults(run=command_info)

    push = commands.add_parser(
        "push",
        help="upload an adapter folder (with its task.json) to the Hugging Face Hub",
        formatter_class=HelpFormatter,
    )
    push.add_argument("adapter", help="adapter folder written by softprompt train")
    push.add_argument("repo_id", help="Hub repo, e.g. your-name/twitter-complaints-prompt (created if missing)")
    option(push, "--private", action="store_true", help="create the repo private")
    option(push, "--token", default=None, help="Hub token (default: the one `hf auth login` stored)")
    push.set_defaults(run=command_push)


def command_info(args, extra) -> int:
    config = read_adapter_config(args.adapter)
    table = read_adapter_table(args.adapter)
    folder = Path(args.adapter)
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()} if folder.is_dir() else {}
    info = {
        "method": config.get("peft_type"),
        "task_type": config.get("task_type"),
        "base_model": config.get("base_model_name_or_path"),
        "num_virtual_tokens": config.get("num_virtual_tokens"),
        "prompt_embeddings": list(table.shape),
        "parameters": table.numel(),
        "files_bytes": sizes,
    }
    task = folder / TASK_NAME
    if task.is_file():
        spec = json.loads(task.read_text())
        if "tasks" in spec:  # trained on several tasks: eval/predict pick one with --task
            info["tasks"] = [
                {"task_id": t.get("task_id"), "name": t.get("name"), "labels": t.get("label_names")}
                for t in spec["tasks"]
            ]
        else:
            info["labels"] = spec.get("label_names")
            info["template"] = spec.get("template")
    print(json.dumps(info, indent=1))
    return 0


def command_push(args, extra) -> int:
    folder = Path(args.adapter)
    if not folder.is_dir():
        raise ValueError(
            f"{folder} is not a folder: pass the adapter folder softprompt train wrote (OUTPUT_DIR/adapter)."
        )
    read_adapter_config(folder), read_adapter_table(folder), read_task(folder)  # refuse a damaged or partial adapter
    card = card_for_upload(folder, args.repo_id)  # the model card names the repo
    with tempfile.TemporaryDirectory() as staging:
        copy = Path(staging) / folder.name
        shutil.copytree(folder, copy)
        if card is not None:
            (copy / CARD_NAME).write_text(card)
        url = upload_folder(copy, args.repo_id, private=args.private or None, token=args.token)
    print(f'Pushed {folder} to {args.repo_id}: {url}\nUse it with: softprompt predict {args.repo_id} "some text"')
    return 0
