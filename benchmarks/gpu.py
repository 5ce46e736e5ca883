"""On a CUDA device: training throughput against PEFT, and mixed-adapter serving throughput, on models the size of
SmolLM2-1.7B, Qwen2.5-1.5B and Llama-3.1-8B, in bf16, printed side by side with the ratios.

    .venv/bin/python benchmarks/gpu.py                       # every shape, both methods (~10 min on one H200)
    .venv/bin/python benchmarks/gpu.py --shapes qwen2.5-1.5b --steps 10
    .venv/bin/python benchmarks/gpu.py --table benchmarks/results/gpu.json
    .venv/bin/python benchmarks/gpu.py --smoke               # tiny shapes on the CPU (tests/test_benchmarks.py)

The models are built from their published configs with random weights (speed needs no trained weights, and a GPU
machine may have no Hub access); only the shapes matter: layers, widths, grouped-query heads, vocabulary.

- Training: prompt tuning and prefix tuning, 20 virtual tokens, batches of 8 rows of 64-256 random tokens (the same
  batches for both), the loss on each row's last 8 tokens, AdamW on the prompt; PEFT 0.21's PeftModel against
  softprompt's, each as its users run it (softprompt computes the LM head only where the loss needs it). Real
  (unpadded) tokens per second after warm-up steps, and peak memory.
- Serving: label scoring of batches of 32 rows spread over K = 1 or 100 prompt-tuning adapters: softprompt in
  mixed-adapter batches (one forward, `adapter_names` per row, each adapter's keys/values cached), PEFT one adapter
  at a time (`set_adapter` per group, as its users must). Rows per second, and softprompt's 100-adapter figure
  against its own 1-adapter one.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SHAPES = {  # the published configs' shapes (config.json of each model)
    "smollm2-1.7b": dict(arch="llama", hidden=2048, layers=24, heads=32, kv_heads=32, ffn=8192, vocab=49152),
    "qwen2.5-1.5b": dict(arch="qwen2", hidden=1536, layers=28, heads=12, kv_heads=2, ffn=8960, vocab=151936),
    "llama-3.1-8b": dict(arch="llama", hidden=4096, layers=32, heads=32, kv_heads=8, ffn=14336, vocab=128256),
}
TINY = dict(hidden=64, layers=2, heads=4, ffn=128, vocab=512)  # --smoke: the same architectures, tiny
METHODS = ("prompt_tuning", "prefix_tuning")
VIRTUAL, BATCH, LABEL_TOKENS = 20, 8, 8


def build(shape: dict, tiny: bool, device, dtype):
    """A random model of `shape` (tiny: its architecture at a toy size)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    size = {**shape, **TINY, "kv_heads": min(shape["kv_heads"], 2)} if tiny else shape
    kind = {"llama": LlamaConfig, "qwen2": Qwen2Config}[shape["arch"]]
    config = kind(
        vocab_size=size["vocab"], hidden_size=size["hidden"], num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"], num_key_value_heads=size["kv_heads"], intermediate_size=size["ffn"],
        max_position_embeddings=4096, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).to(device)


def batches(count: int, vocab: int, lengths: tuple[int, int], seed: int = 0) -> list[dict]:
    """Left-padded rows of random tokens; labels on each row's last LABEL_TOKENS tokens."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        rows = [[rng.randrange(3, vocab) for _ in range(rng.randint(*lengths))] for _ in range(BATCH)]
        width = max(map(len, rows))
        ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        labels = torch.full_like(ids, -100)
        labels[:, -LABEL_TOKENS:] = ids[:, -LABEL_TOKENS:]
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_mb(device) -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else common.peak_rss_mb()


def train_speed(library: str, method: str, model, data: list[dict], warmup: int, device) -> dict:
    """Real tokens/s of prompt training steps with `library`'s wrapper around `model`."""
    if library == "peft":
        import peft

        kind = {"prompt_tuning": peft.PromptTuningConfig, "prefix_tuning": peft.PrefixTuningConfig}[method]
        wrapped = peft.get_peft_model(model, kind(task_type="CAUSAL_LM", num_virtual_tokens=VIRTUAL))
        extra = {}
    else:
        from softprompt import PrefixTuningConfig, PromptTuningConfig, get_peft_model

        kind = {"prompt_tuning": PromptTuningConfig, "prefix_tuning": PrefixTuningConfig}[method]
        wrapped = get_peft_model(model, kind(task_type="CAUSAL_LM", num_virtual_tokens=VIRTUAL))
        extra = {"logits_to_keep": LABEL_TOKENS + 1}  # the LM head only where the loss reads it
    wrapped.train()
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-3)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tokens, seconds = 0, 0.0
    for step, batch in enumerate(data):
        batch = {key: value.to(device) for key, value in batch.items()}
        synchronize(device)
        started = time.perf_counter()
        wrapped(**batch, **extra).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        synchronize(device)
        if step >= warmup:
            seconds += time.perf_counter() - started
            tokens += int(batch["attention_mask"].sum())
    return {"tokens_per_s": tokens / seconds, "peak_memory_mb": round(peak_memory_mb(device))}


def serve_speed(library: str, adapters: int, model, data: list[dict], warmup: int, device) -> float:
    """Rows/s of label scoring (the last position's logits) for rows spread over `adapters` prompt-tuning adapters."""
    names = [f"a{k}" for k in range(adapters)]
    rng = random.Random(1)
    if library == "peft":
        import peft

        wrapped = peft.get_peft_model(model, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=VIRTUAL),
                                      adapter_name=names[0])  # fmt: skip
        for name in names[1:]:
            wrapped.add_adapter(name, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=VIRTUAL))
    else:
        from softprompt import PromptTuningConfig, get_peft_model

        wrapped = get_peft_model(model, PromptTuningConfig(num_virtual_tokens=VIRTUAL), adapter_name=names[0])
        for name in names[1:]:
            wrapped.add_adapter(name, PromptTuningConfig(num_virtual_tokens=VIRTUAL))
    wrapped.eval()
    rows, seconds = 0, 0.0
    with torch.no_grad():
        for step, batch in enumerate(data):
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            chosen = [rng.choice(names) for _ in range(len(ids))]
            synchronize(device)
            started = time.perf_counter()
            if library == "peft":  # one adapter per forward
                for name in sorted(set(chosen)):
                    index = torch.tensor([i for i, n in enumerate(chosen) if n == name], device=device)
                    wrapped.set_adapter(name)
                    wrapped(input_ids=ids[index], attention_mask=mask[index], logits_to_keep=1)
            else:
                wrapped(input_ids=ids, attention_mask=mask, adapter_names=chosen, logits_to_keep=1)
            synchronize(device)
            if step >= warmup:
                seconds += time.perf_counter() - started
                rows += len(ids)
    return rows / seconds


def measure(name: str, shape: dict, args, device, dtype) -> dict:
    lengths = (8, 24) if args.tiny else (64, 256)
    train_data = batches(args.steps + args.warmup, TINY["vocab"] if args.tiny else shape["vocab"], lengths)
    result = {"shape": name, "training": {}, "serving": {}}
    for method in METHODS:
        for library in ("peft", "softprompt"):
            model = build(shape, args.tiny, device, dtype)
            result["training"][f"{method}/{library}"] = train_speed(
                library, method, model, train_data, args.warmup, device
            )
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    serve_data = [  # 32 rows a batch
        dict(b, input_ids=torch.cat([b["input_ids"]] * 4), attention_mask=torch.cat([b["attention_mask"]] * 4))
        for b in train_data
    ]
    for adapters in args.adapters:
        for library in ("peft", "softprompt"):
            model = build(shape, args.tiny, device, dtype)
            result["serving"][f"{adapters}/{library}"] = serve_speed(
                library, adapters, model, serve_data, args.warmup, device
            )
            del model
    print(table([result]), flush=True)
    return result


def table(results: list[dict]) -> str:
    lines = ["| shape | measure | PEFT | softprompt | softprompt / PEFT |", "|---|---|---|---|---|"]
    for r in results:
        for method in METHODS:
            theirs, ours = r["training"][f"{method}/peft"], r["training"][f"{method}/softprompt"]
            lines.append(
                f"| {r['shape']} | train {method}: tokens/s (peak MB) | {theirs['tokens_per_s']:,.0f} "
                f"({theirs['peak_memory_mb']:,}) | {ours['tokens_per_s']:,.0f} ({ours['peak_memory_mb']:,}) "
                f"| {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x |"
            )
        adapters = sorted({int(key.split("/")[0]) for key in r["serving"]})
        for k in adapters:
            theirs, ours = r["serving"][f"{k}/peft"], r["serving"][f"{k}/softprompt"]
            lines.append(
                f"| {r['shape']} | serve {k} adapters: rows/s | {theirs:,.0f} | {ours:,.0f} | {ours / theirs:.2f}x |"
            )
        if len(adapters) > 1:
            first, last = r["serving"][f"{adapters[0]}/softprompt"], r["serving"][f"{adapters[-1]}/softprompt"]
            lines.append(
                f"| {r['shape']} | softprompt {adapters[-1]} vs {adapters[0]} adapters | | | {last / first:.2f}x |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--steps", type=int, default=20, help="measured steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--adapters", nargs="+", type=int, default=[1, 100])
    parser.add_argument("--table", help="print the table of a results file and stop")
    parser.add_argument("--results", help="default: benchmarks/results/gpu.json")
    common.add_smoke_argument(parser)
    args = parser.parse_args()
    if args.table:
        print(table(common.read_json(Path(args.table))["shapes"]))
        return
    args.tiny = args.smoke is not None or not torch.cuda.is_available()
    if args.smoke is not None:
        common.start_smoke(args.smoke)
        args.steps, args.warmup, args.adapters, args.shapes = 2, 1, [1, 4], ["smollm2-1.7b", "qwen2.5-1.5b"]
    elif args.tiny:
        raise SystemExit("benchmarks/gpu.py measures a CUDA device and none is here (--smoke runs it at tiny scale).")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu (tiny shapes)"
    print(f"{device_name}, {dtype}, torch {torch.__version__}", flush=True)
    results = [measure(name, SHAPES[name], args, device, dtype) for name in args.shapes]
    out = common.write_json(common.results_path("gpu.json", args.results),
                            {"device": device_name, "dtype": str(dtype), "torch": torch.__version__, "shapes": results},
                            indent=1)  # fmt: skip
    print(f"\n{table(results)}\nwritten: {out}")


if __name__ == "__main__":
    main()
