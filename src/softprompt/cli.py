"""The `softprompt` command: train, eval, predict, info, push, serve, demo."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import yaml

DEMO_DATA = Path(__file__).parent / "demo_data"
CONFIG_HELP = """Fields of a training config (YAML or --field value; nested with dots, e.g. --task.max_length 96):
  model, method (prompt_tuning | p_tuning | prefix_tuning | multitask_prompt_tuning), method_options.* (PEFT config fields),
  train_file, eval_file (local files, or hf://datasets/OWNER/NAME@REVISION/PATH), dataset, dataset_config, train_split,
  eval_split, max_train_rows, tasks (several tasks at once: tasks.I.name, tasks.I.train_file, tasks.I.eval_file,
  tasks.I.max_train_rows, tasks.I.task.*),
  task.text_columns, task.label_column, task.label_names, task.verbalizer, task.template, task.max_length,
  validation_fraction, epochs, lr, batch_size, gradient_accumulation_steps, warmup_ratio, weight_decay,
  max_grad_norm, seed, eval_method (scoring | generation), eval_batch_size, best_metric (... | last), early_stopping_patience,
  output_dir, progress. See softprompt.train.TrainConfig for what each means."""


def parse_overrides(pairs: list[str]) -> dict:
    """['--epochs', '3', '--task.max_length=96'] -> {'epochs': 3, 'task.max_length': 96} (values read as YAML)."""
    overrides, i = {}, 0
    while i < len(pairs):
        key = pairs[i]
        if not key.startswith("--"):
            raise SystemExit(f"Unexpected argument {key!r}: overrides look like --field value.")
        key = key[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(pairs):
            value = pairs[i + 1]
            i += 2
        else:
            raise SystemExit(f"--{key} needs a value.")
        overrides[key.replace("-", "_")] = yaml.safe_load(value)
    return overrides


def command_train(args, extra) -> int:
    from .train import TrainConfig, train

    overrides = parse_overrides(extra)
    config = TrainConfig.from_yaml(args.config, overrides) if args.config else TrainConfig.from_dict({}, overrides)
    final = train(config, resume=args.resume)
    print(f"Adapter: {Path(config.output_dir) / 'adapter'}")
    return 0 if final is not None else 1


def load_predictor(args):
    from .predictor import Predictor

    adapters = [args.adapter, *args.ensemble]
    predictor = Predictor.from_pretrained(adapters, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                                          task=getattr(args, "task", None))
    predictor.use_calibration = not getattr(args, "no_calibration", False)
    return predictor


def command_eval(args, extra) -> int:
    from .data import load_table
    from .evaluate import classification_metrics

    if args.ensemble and args.method == "generation":
        raise ValueError("--ensemble averages label scores: use it with --method scoring.")
    table = load_table(args.data, args.dataset_config, args.split, field="data")
    predictor = load_predictor(args)
    members = predictor.adapter_names
    encoder = predictor.task(members[0])
    gold = [e.label for e in encoder.encode_table(table)]  # checks every row has a label
    predictions = predictor.classify(
        table.rows, ensemble=members if len(members) > 1 else None, method=args.method, progress=True
    )
    predicted = [encoder.class_names.index(p["label"]) if p["label"] is not None else -1 for p in predictions]
    metrics = classification_metrics(gold, predicted, encoder.class_names)
    metrics["method"] = args.method
    metrics["adapters"] = len(members)
    print(json.dumps(metrics, indent=1))
    if args.output:
        Path(args.output).write_text(json.dumps(metrics, indent=1))
    return 0


def read_predict_rows(args, text_column: str) -> list[dict]:
    if args.texts:
        return [{text_column: t} for t in args.texts]
    if args.input == "-":
        lines = [line for line in sys.stdin.read().splitlines() if line.strip()]
        return [json.loads(line) if line.lstrip().startswith("{") else {text_column: line} for line in lines]
    if args.input:
        from .data import load_table

        return load_table(args.input, field="input").rows
    raise SystemExit("Give texts to classify, --input FILE (CSV/JSONL), or --input - to read stdin.")


def write_predictions(rows: list[dict], output: str | None) -> None:
    if output and output.endswith(".csv"):
        with open(output, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if output:
        Path(output).write_text(text)
    else:
        sys.stdout.write(text)


def command_predict(args, extra) -> int:
    if args.generate and args.ensemble:
        raise ValueError("--ensemble averages label scores: it does not combine with --generate.")
    predictor = load_predictor(args)
    name = predictor.adapter_names[0]
    if args.generate and not args.template:
        # a text on the command line (or a line of stdin) is the whole prompt, used as written
        rows = read_predict_rows(args, "text")
        texts = [row["text"] if "text" in row else row for row in rows]
        for row, text in zip(rows, predictor.generate(texts, name, max_new_tokens=args.max_new_tokens)):
            row["generated"] = text
        write_predictions(rows, args.output)
        return 0
    rows = read_predict_rows(args, predictor.task(name).spec.text_columns[0])
    if args.generate:  # --template: each text fills the adapter's template
        for row, text in zip(rows, predictor.generate([dict(row) for row in rows], name, max_new_tokens=args.max_new_tokens)):
            row["generated"] = text
    else:
        ensemble = predictor.adapter_names if args.ensemble else None
        for row, prediction in zip(rows, predictor.classify(rows, name, ensemble=ensemble)):
            row["label"] = prediction["label"]
            row.update({f"p({c})": round(p, 4) for c, p in prediction["probabilities"].items()})
    write_predictions(rows, args.output)
    return 0


def command_info(args, extra) -> int:
    from .adapters import read_adapter_config, read_adapter_table

    config = read_adapter_config(args.adapter)
    table = read_adapter_table(args.adapter)
    folder = Path(args.adapter)
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()} if folder.is_dir() else {}
    info = {
        "method": config.get("peft_type"),
        "base_model": config.get("base_model_name_or_path"),
        "num_virtual_tokens": config.get("num_virtual_tokens"),
        "prompt_embeddings": list(table.shape),
        "parameters": table.numel(),
        "files_bytes": sizes,
    }
    task = folder / "task.json"
    if task.is_file():
        spec = json.loads(task.read_text())
        if "tasks" in spec:  # trained on several tasks: eval/predict pick one with --task
            info["tasks"] = [{"task_id": t.get("task_id"), "name": t.get("name"), "labels": t.get("label_names")} for t in spec["tasks"]]
        else:
            info["labels"] = spec.get("label_names")
            info["template"] = spec.get("template")
    print(json.dumps(info, indent=1))
    return 0


def command_push(args, extra) -> int:
    from .adapters import read_adapter_config, read_adapter_table, upload_folder
    from .task import read_task

    folder = Path(args.adapter)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder: pass the adapter folder softprompt train wrote (OUTPUT_DIR/adapter).")
    read_adapter_config(folder), read_adapter_table(folder), read_task(folder)  # refuse a damaged or partial adapter
    url = upload_folder(folder, args.repo_id, private=args.private or None, token=args.token)
    print(f"Pushed {folder} to {args.repo_id}: {url}\nUse it with: softprompt predict {args.repo_id} \"some text\"")
    return 0


def command_serve(args, extra) -> int:
    from .serve import serve

    serve(args.adapter, args.model, args.host, args.port, args.api_key, args.max_batch_size, args.max_wait_ms,
          args.device, args.dtype, args.cache_bytes, mix_adapters=not args.one_adapter_per_batch)
    return 0


def command_demo(args, extra) -> int:
    """Train prompt tuning on the bundled demo messages, report dev accuracy, classify two new messages."""
    from .train import TrainConfig, train

    overrides = parse_overrides(extra)
    demo = yaml.safe_load((DEMO_DATA / "demo.yaml").read_text())
    demo["train_file"] = str(DEMO_DATA / "train.csv")
    demo["eval_file"] = str(DEMO_DATA / "dev.csv")
    config = TrainConfig.from_dict(demo, overrides)
    final = train(config)
    print(f"\nDev accuracy after {final['epoch']} epochs: {final['eval_accuracy']:.3f} (macro-F1 {final['eval_macro_f1']:.3f})")
    adapter = str(Path(config.output_dir) / "adapter")
    print(f"Adapter saved in {adapter}\n\nClassifying two new messages with it:")
    predict = build_parser().parse_args(["predict", adapter, "--", *DEMO_TEXTS])
    return command_predict(predict, [])


DEMO_TEXTS = [
    "@QuickCart my parcel was marked delivered three days ago and it is nowhere to be found",
    "@MapleCoffee the new oat latte is lovely, thanks for bringing it back!",
]


def add_task_option(parser) -> None:
    parser.add_argument("--task", default=None, metavar="NAME_OR_ID",
                        help="for an adapter trained on several tasks (tasks: in its config): which one, by name or task id")


def add_device_options(parser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps or auto (default: CUDA if present, else CPU)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: as the model was saved)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="softprompt", description="Prompt tuning, p-tuning and prefix tuning for frozen causal LMs.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train", help="train a soft prompt", epilog=CONFIG_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a soft prompt from a YAML config; any field can be overridden with --field value.",
    )
    train.add_argument("--config", help="YAML run config, e.g. configs/twitter_complaints/prompt_tuning.yaml")
    train.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint after a crash")
    train.set_defaults(run=command_train)

    evaluate = commands.add_parser("eval", help="accuracy, macro-F1 and confusion matrix of an adapter on labelled data")
    evaluate.add_argument("adapter", help="adapter folder written by softprompt train (OUTPUT_DIR/adapter)")
    evaluate.add_argument("--data", required=True, help="labelled CSV/JSONL/Parquet file, hf://datasets/... files, or a hub dataset id")
    evaluate.add_argument("--dataset-config", default=None, help="hub dataset config, e.g. twitter_complaints")
    evaluate.add_argument("--split", default="test", help="hub dataset split (default test)")
    evaluate.add_argument("--method", choices=["scoring", "generation"], default="scoring",
                          help="scoring: rank the labels by likelihood; generation: greedy text mapped to a label")
    evaluate.add_argument("--ensemble", nargs="+", default=[], metavar="ADAPTER",
                          help="more adapters for the same labels (e.g. other seeds): average their class probabilities")
    evaluate.add_argument("--batch-size", type=int, default=16)
    add_task_option(evaluate)
    add_device_options(evaluate)
    evaluate.add_argument("--no-calibration", action="store_true", help="ignore the adapter's calibration.json (plain label scores)")
    evaluate.add_argument("--output", help="also write the metrics JSON here")
    evaluate.set_defaults(run=command_eval)

    predict = commands.add_parser("predict", help="label (and scores) for new texts, or free generation")
    predict.add_argument("adapter", help="adapter folder written by softprompt train")
    predict.add_argument("texts", nargs="*", help="texts to classify")
    predict.add_argument("--input", help="CSV/JSONL file with the task's text column(s), or - for stdin (one text or JSON object a line)")
    predict.add_argument("--output", help="write CSV (.csv) or JSONL (other names); default JSONL on stdout")
    predict.add_argument("--generate", action="store_true",
                         help="generate text instead of classifying; each text is the whole prompt, used as written")
    predict.add_argument("--template", action="store_true",
                         help="with --generate: fill each text (or row) into the adapter's template first, as classification does")
    predict.add_argument("--max-new-tokens", type=int, default=20, help="with --generate")
    predict.add_argument("--ensemble", nargs="+", default=[], metavar="ADAPTER",
                          help="more adapters for the same labels (e.g. other seeds): average their class probabilities")
    predict.add_argument("--batch-size", type=int, default=16)
    add_task_option(predict)
    add_device_options(predict)
    predict.add_argument("--no-calibration", action="store_true", help="ignore the adapter's calibration.json (plain label scores)")
    predict.set_defaults(run=command_predict)

    info = commands.add_parser("info", help="method, base model and sizes of an adapter")
    info.add_argument("adapter")
    info.set_defaults(run=command_info)

    push = commands.add_parser("push", help="upload an adapter folder (with its task.json) to the Hugging Face Hub")
    push.add_argument("adapter", help="adapter folder written by softprompt train")
    push.add_argument("repo_id", help="Hub repo, e.g. your-name/twitter-complaints-prompt (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--token", default=None, help="Hub token (default: the one `hf auth login` stored)")
    push.set_defaults(run=command_push)

    serve = commands.add_parser(
        "serve", help="serve adapters over HTTP (OpenAI-compatible: /v1/completions, /v1/chat/completions, /v1/classify)",
        description="Serve many soft prompts on one frozen base model. `model` in a request names an adapter or the base model.",
    )
    serve.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                       help="an adapter to serve (folder or Hub id), as NAME=PATH or PATH; repeat for more")
    serve.add_argument("--model", default=None, help="base model (default: the one the first adapter names)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", default=os.environ.get("SOFTPROMPT_API_KEY"),
                       help="require 'Authorization: Bearer KEY' on every request; enables load/unload (env SOFTPROMPT_API_KEY)")
    serve.add_argument("--max-batch-size", type=int, default=32, help="rows computed together at most")
    serve.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a batch waits for more requests")
    serve.add_argument("--cache-bytes", type=int, default=2**30, help="memory for cached prompt keys/values (default 1 GiB)")
    serve.add_argument("--one-adapter-per-batch", action="store_true", help="never mix adapters in a batch (a baseline)")
    add_device_options(serve)
    serve.set_defaults(run=command_serve)

    from .calibration import add_command as add_calibrate_command

    add_calibrate_command(commands)

    demo = commands.add_parser("demo", help="train on the bundled demo data with the offline default model, then predict")
    demo.set_defaults(run=command_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .adapters import AdapterError
    from .config import ConfigError
    from .data import DataError
    from .models import ModelNotFoundError
    from .train import TrainingDiverged

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "predict":  # texts may come after options (or after --): argparse leaves those in `extra`
        cut = extra.index("--") if "--" in extra else len(extra)
        args.texts += [text for text in extra[:cut] if not text.startswith("-")] + extra[cut + 1:]
        extra = [text for text in extra[:cut] if text.startswith("-")]
    if extra and args.command not in ("train", "demo"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.run(args, extra)
    except (AdapterError, ConfigError, ConnectionError, DataError, ModelNotFoundError, TrainingDiverged, ValueError) as error:
        print(f"softprompt {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
