"""`softprompt eval`, `softprompt predict` and `softprompt calibrate`: the Predictor on the command line."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from ..data import load_table
from ..inference import Predictor, calibrate_adapter_folder, classification_metrics
from ..inference.calibration import CALIBRATION_NAME, DEFAULT_LIMIT
from .options import HelpFormatter, add_ensemble_option, add_model_options, add_task_option, dtype_of, option

ADAPTER_HELP = "an adapter folder written by softprompt train (OUTPUT_DIR/adapter), or a Hub repo"


def add_commands(commands) -> None:
    evaluate = commands.add_parser(
        "eval",
        help="accuracy, macro-F1 and confusion matrix of an adapter on labelled data",
        formatter_class=HelpFormatter,
    )
    evaluate.add_argument("adapter", help=ADAPTER_HELP)
    option(
        evaluate,
        "--data",
        required=True,
        help="labelled CSV/JSONL/Parquet file, hf://datasets/... files, or a Hub dataset id",
    )
    option(evaluate, "--dataset-config", default=None, help="Hub dataset config, e.g. twitter_complaints")
    option(evaluate, "--split", default="test", help="Hub dataset split")
    option(
        evaluate,
        "--method",
        choices=["scoring", "generation"],
        default="scoring",
        help="scoring: rank the labels by likelihood; generation: greedy text mapped to a label",
    )
    option(evaluate, "--output", help="also write the metrics JSON here")
    add_classifier_options(evaluate)
    evaluate.set_defaults(run=command_eval)

    predict = commands.add_parser(
        "predict",
        help="label (and scores) for new texts, or free generation",
        formatter_class=HelpFormatter,
        epilog="Texts that start with '-' go after --:  softprompt predict ADAPTER -- '-5 stars, never again'",
    )
    predict.add_argument("adapter", help=ADAPTER_HELP)
    predict.add_argument("texts", nargs="*", help="texts to classify (or, with --generate, prompts)")
    option(
        predict,
        "--input",
        help="CSV/JSONL file with the task's text column(s), or - for stdin (a text or JSON object a line)",
    )
    option(predict, "--output", help="write CSV (.csv) or JSONL (other names); default JSONL on stdout")
    option(
        predict,
        "--generate",
        action="store_true",
        help="generate text instead of classifying; a text is the whole prompt",
    )
    option(
        predict,
        "--template",
        action="store_true",
        help="with --generate: fill each text into the adapter's template first",
    )
    option(predict, "--max-new-tokens", type=int, default=20, help="with --generate")
    add_classifier_options(predict)
    predict.set_defaults(run=command_predict)

    calibrate = commands.add_parser(
        "calibrate",
        help="store a class prior estimated on unlabelled texts with an adapter",
        formatter_class=HelpFormatter,
    )
    calibrate.add_argument("adapter", help="an adapter folder written by softprompt train")
    option(calibrate, "--data", required=True, help="unlabelled inputs of the task (CSV/TSV/JSON/JSONL/Parquet)")
    option(calibrate, "--column", help="the text column (default: the task's first text column)")
    option(calibrate, "--limit", type=int, default=DEFAULT_LIMIT, help="a seeded sample of this many rows (0: all)")
    add_model_options(calibrate)
    calibrate.set_defaults(run=command_calibrate)


def add_classifier_options(parser) -> None:
    add_ensemble_option(parser)
    option(parser, "--batch-size", type=int, default=16, help="rows per batch")
    add_task_option(parser)
    add_model_options(parser)
    option(parser, "--no-calibration", action="store_true", help="ignore the adapter's calibration.json (plain scores)")


def load_predictor(args) -> Predictor:
    predictor = Predictor.from_pretrained(
        [args.adapter, *args.ensemble],
        base_model=args.model,
        device=args.device,
        dtype=dtype_of(args),
        batch_size=args.batch_size,
        task=args.task,
    )
    predictor.use_calibration = not args.no_calibration
    return predictor


def command_eval(args, extra) -> int:
    if args.ensemble and args.method == "generation":
        raise ValueError("--ensemble averages label scores: use it with --method scoring.")
    table = load_table(args.data, args.dataset_config, args.split, field="data")
    predictor = load_predictor(args)
    members = predictor.adapter_names
    task = predictor.row_tokenizer(members[0])
    gold = [e.label for e in task.encode_table(table)]  # checks every row has a label
    ensemble = members if len(members) > 1 else None
    predictions = predictor.classify(table.rows, ensemble=ensemble, method=args.method, progress=True)
    predicted = [task.class_names.index(p["label"]) if p["label"] is not None else -1 for p in predictions]
    metrics = classification_metrics(gold, predicted, task.class_names)
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
    if args.generate and not args.template:  # a text on the command line (or a line of stdin) is the whole prompt
        rows = read_predict_rows(args, "text")
        texts = [row["text"] if "text" in row else row for row in rows]
        for row, text in zip(rows, predictor.generate(texts, name, max_new_tokens=args.max_new_tokens)):
            row["generated"] = text
        write_predictions(rows, args.output)
        return 0
    rows = read_predict_rows(args, predictor.row_tokenizer(name).spec.text_columns[0])
    if args.generate:  # --template: each text fills the adapter's template
        texts = predictor.generate([dict(row) for row in rows], name, max_new_tokens=args.max_new_tokens)
        for row, text in zip(rows, texts):
            row["generated"] = text
    else:
        ensemble = predictor.adapter_names if args.ensemble else None
        for row, prediction in zip(rows, predictor.classify(rows, name, ensemble=ensemble)):
            row["label"] = prediction["label"]
            row.update({f"p({c})": round(p, 4) for c, p in prediction["probabilities"].items()})
    write_predictions(rows, args.output)
    return 0


def command_calibrate(args, extra) -> int:
    prior = calibrate_adapter_folder(
        args.adapter,
        args.data,
        args.column,
        args.limit or None,
        args.device,
        base_model=args.model,
        dtype=dtype_of(args),
    )
    names = json.loads((Path(args.adapter) / CALIBRATION_NAME).read_text())["class_names"]
    shown = ", ".join(f"{name} {p:.3f}" for name, p in zip(names, prior.tolist()))
    print(f"Wrote {Path(args.adapter) / CALIBRATION_NAME}: class prior {shown}.")
    return 0
