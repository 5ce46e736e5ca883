"""Serving many prompts: requests/s and latency of `softprompt serve` against the ways without mixed batches.

    .venv/bin/python benchmarks/serve.py            # 1/10/100 adapters x 1/8/32 clients x classify/generate (~25 min)
    .venv/bin/python benchmarks/serve.py --quick    # fewer requests, 1 and 100 adapters (~8 min)
    .venv/bin/python benchmarks/serve.py --table benchmarks/results/serve.json
    .venv/bin/python benchmarks/serve.py --smoke    # seconds: a tiny model, 2 adapters, 4 requests a cell

SmolLM2-135M (fp32, this CPU) with K prompt-tuning adapters (those of benchmarks/multi_adapter.py: two
trained, the rest perturbed copies), twitter_complaints dev tweets spread uniformly over the adapters.
Each request is one tweet: `POST /v1/classify` (label scoring), or `POST /v1/completions` with the
adapter's template filled in, max_tokens 8, greedy. Concurrent clients on loopback, side by side:
  mixed     `softprompt serve` (requests that arrive together share a batch, whatever their adapters);
  per-adapter  the same server with --one-adapter-per-batch (a batch holds one adapter's requests);
  peft      the PEFT way: a server holding a PeftModel with every adapter, one request at a time with
            `set_adapter` per request, labels scored by a forward over prompt + label.
"offline" is one `Predictor.classify([tweet])` call (or `generate`) in this process, the latency floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common
from common import ROOT
from multi_adapter import MODEL, make_adapters, spread, train_real_adapters

QUESTION = "Tweet: {text}\nQuestion: Is the author of this tweet complaining about a product or service?\nAnswer:"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], url: str) -> subprocess.Popen:
    import httpx

    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.time() + 600
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.5)
    raise RuntimeError("server did not start")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


async def load(url: str, requests: list[tuple[str, dict]], clients: int) -> dict:
    """`clients` concurrent clients send the requests in order; -> requests/s, p50/p99 latency, errors."""
    import httpx

    latencies, errors = [], 0
    queue = list(enumerate(requests))

    async def client(http):
        nonlocal errors
        while queue:
            _, (path, body) = queue.pop(0)
            started = time.perf_counter()
            response = await http.post(url + path, json=body)
            latencies.append(time.perf_counter() - started)
            errors += response.status_code != 200

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(requests),
        "errors": errors,
        "requests_per_second": len(requests) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
    }


def requests_for(kind: str, tweets: list[str], names: list[str]) -> list[tuple[str, dict]]:
    if kind == "classify":
        return [("/v1/classify", {"model": n, "input": [t]}) for t, n in zip(tweets, names)]
    return [
        ("/v1/completions", {"model": n, "prompt": QUESTION.format(text=t), "max_tokens": 8, "temperature": 0})
        for t, n in zip(tweets, names)
    ]


def offline_latency(adapters: dict[str, str], kind: str, tweets: list[str], names: list[str]) -> dict:
    from softprompt import Predictor

    predictor = Predictor.from_pretrained(adapters, device="cpu", dtype="float32")
    for name in adapters:
        predictor.model.prompt_states(name)
    times = []
    for tweet, name in zip(tweets, names):
        started = time.perf_counter()
        if kind == "classify":
            predictor.classify([tweet], name)
        else:
            predictor.generate(QUESTION.format(text=tweet), name, max_new_tokens=8)
        times.append(time.perf_counter() - started)
    times.sort()
    return {
        "p50_ms": 1000 * statistics.median(times),
        "p99_ms": 1000 * times[min(len(times) - 1, int(0.99 * len(times)))],
    }


# ---- the PEFT way, as a server --------------------------------------------------------------------
def peft_server(port: int, adapters_file: str) -> None:
    import threading

    import peft
    import torch
    import uvicorn
    from fastapi import FastAPI

    from softprompt import load_base_model, load_tokenizer
    from softprompt.data import load_task

    adapters = json.loads(Path(adapters_file).read_text())
    items = list(adapters.items())
    tokenizer = load_tokenizer(common.model_name(MODEL))
    model = peft.PeftModel.from_pretrained(
        load_base_model(common.model_name(MODEL)), items[0][1], adapter_name=items[0][0]
    ).eval()
    for name, path in items[1:]:
        model.load_adapter(path, adapter_name=name)
    task = load_task(items[0][1], tokenizer)
    targets = [task.target_ids(k) for k in range(len(task.class_names))]
    pad = tokenizer.pad_token_id
    lock = threading.Lock()  # one adapter active at a time: requests take turns
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/v1/classify")
    def classify(body: dict):
        prompt = task.encode({"Tweet text": body["input"][0]}, labelled=False).prompt_ids
        with lock, torch.no_grad():
            model.set_adapter(body["model"])
            # both labels in one batch; right-padded where their lengths differ (the pads follow what is scored)
            width = len(prompt) + max(len(t) for t in targets)
            ids = torch.tensor([prompt + t + [pad] * (width - len(prompt) - len(t)) for t in targets])
            logprobs = model(input_ids=ids).logits[:, -ids.shape[1] :].float().log_softmax(-1)
            scores = [
                float(logprobs[k, len(prompt) - 1 + torch.arange(len(t)), torch.tensor(t)].sum())
                for k, t in enumerate(targets)
            ]
        return {"data": [{"label": task.class_names[max(range(len(scores)), key=scores.__getitem__)]}]}

    @app.post("/v1/completions")
    def completions(body: dict):
        ids = tokenizer(body["prompt"], return_tensors="pt")["input_ids"]
        with lock, torch.no_grad():
            model.set_adapter(body["model"])
            output = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=body["max_tokens"],
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        return {"choices": [{"text": tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)}]}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def table(results: dict) -> str:
    lines = [
        f"{results['machine']}; {results['requests']} requests a cell",
        "",
        (
            "| task | adapters | clients | mixed req/s | per-adapter req/s | PEFT req/s | mixed p50 / p99 ms "
            "| PEFT p50 / p99 ms | offline p50 / p99 ms |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        m, a, p, o = row["mixed"], row["per_adapter"], row["peft"], row["offline"]
        lines.append(
            f"| {row['task']} | {row['adapters']} | {row['clients']} | {m['requests_per_second']:.1f} | "
            f"{a['requests_per_second']:.1f} | "
            f"{p['requests_per_second']:.1f} | {m['p50_ms']:.0f} / {m['p99_ms']:.0f} | "
            f"{p['p50_ms']:.0f} / {p['p99_ms']:.0f} | "
            f"{o['p50_ms']:.0f} / {o['p99_ms']:.0f} |"
        )
    errors = sum(row[w]["errors"] for row in results["rows"] for w in ("mixed", "per_adapter", "peft"))
    lines += ["", f"Errors: {errors}."]
    for task in ("classify", "generate"):
        rows = [r for r in results["rows"] if r["task"] == task]
        if not rows:
            continue
        top = max(r["clients"] for r in rows)
        one = next((r for r in rows if r["adapters"] == min(x["adapters"] for x in rows) and r["clients"] == top), None)
        many = next(
            (r for r in rows if r["adapters"] == max(x["adapters"] for x in rows) and r["clients"] == top), None
        )
        single = next(
            (r for r in rows if r["clients"] == 1 and r["adapters"] == max(x["adapters"] for x in rows)), None
        )
        if one and many:
            lines.append(
                f"{task}, {top} clients, {many['adapters']} adapters: "
                f"{many['mixed']['requests_per_second'] / one['mixed']['requests_per_second']:.2f}x "
                f"the {one['adapters']}-adapter throughput, "
                f"{many['mixed']['requests_per_second'] / many['peft']['requests_per_second']:.2f}x PEFT's, "
                f"{many['mixed']['requests_per_second'] / many['per_adapter']['requests_per_second']:.2f}x "
                f"one-adapter-per-batch."
            )
        if single:
            lines.append(
                f"{task}, 1 client: p99 {single['mixed']['p99_ms']:.0f} ms "
                f"against {single['offline']['p99_ms']:.0f} ms offline "
                f"({single['mixed']['p99_ms'] / single['offline']['p99_ms']:.2f}x)."
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--requests", type=int, default=96, help="requests per cell")
    parser.add_argument("--adapters", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--tasks", nargs="+", default=["classify", "generate"])
    parser.add_argument("--runs", help="the adapters of multi_adapter.py (default: runs/multi_adapter)")
    parser.add_argument("--table")
    parser.add_argument("--peft-server", nargs=2, metavar=("PORT", "ADAPTERS_JSON"), help=argparse.SUPPRESS)
    common.add_smoke_argument(parser)
    args = parser.parse_args()
    if args.peft_server:
        peft_server(int(args.peft_server[0]), args.peft_server[1])
        return
    if args.table:
        print(table(common.read_json(Path(args.table))))
        return
    epochs = 3
    if args.smoke is not None:  # 2 adapters trained for 2 epochs, 4 requests a cell, 1 and 2 clients
        common.start_smoke(args.smoke)
        args.requests, args.adapters, args.clients, epochs = 4, [2], [1, 2], 2
    dev_file = common.task_file("dev")
    if common.absent(dev_file):
        return
    from softprompt.data import load_table

    if args.quick:
        args.requests, args.adapters = 48, [1, 100]
    tweets = [r["Tweet text"] for r in load_table(str(dev_file)).rows][: args.requests]
    runs = Path(args.runs or common.runs_folder("multi_adapter"))
    folders = make_adapters(train_real_adapters(runs, epochs), max(args.adapters), runs / "adapters")
    results = {"machine": common.machine_line(), "requests": len(tweets), "rows": []}
    for k in args.adapters:
        adapters = dict(list(folders.items())[:k])
        names = spread(len(tweets), k)
        offline = {task: offline_latency(adapters, task, tweets[:24], names[:24]) for task in args.tasks}
        measured: dict = {}
        adapter_args = [arg for name, path in adapters.items() for arg in ("--adapter", f"{name}={path}")]
        (runs / "serve-adapters.json").write_text(json.dumps(adapters))
        for way, extra in (("mixed", []), ("per_adapter", ["--one-adapter-per-batch"]), ("peft", None)):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            if extra is None:
                command = [
                    sys.executable,
                    __file__,
                    "--peft-server",
                    str(port),
                    str(runs / "serve-adapters.json"),
                ]
            else:
                command = [
                    sys.executable,
                    "-m",
                    "softprompt.cli",
                    "serve",
                    "--port",
                    str(port),
                    "--dtype",
                    "float32",
                    "--device",
                    "cpu",
                    "--max-batch-size",
                    "32",
                    *adapter_args,
                    *extra,
                ]
            process = start(command, url)
            try:
                for task in args.tasks:
                    asyncio.run(load(url, requests_for(task, tweets[:8], names[:8]), 4))  # warm up
                    for clients in args.clients:
                        measured[(task, clients, way)] = asyncio.run(
                            load(url, requests_for(task, tweets, names), clients)
                        )
                        print(way, k, task, clients, json.dumps(measured[(task, clients, way)]), flush=True)
            finally:
                stop(process)
        for task in args.tasks:
            for clients in args.clients:
                results["rows"].append(
                    {
                        "task": task,
                        "adapters": k,
                        "clients": clients,
                        "offline": offline[task],
                        **{way: measured[(task, clients, way)] for way in ("mixed", "per_adapter", "peft")},
                    }
                )
    common.write_json(common.results_path(f"serve{'_quick' if args.quick else ''}.json"), results, indent=1)
    print(table(results))


if __name__ == "__main__":
    main()
