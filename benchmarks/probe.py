"""How much twitter_complaints signal do 50 labelled tweets get out of SmolLM2-135M's frozen features?

    .venv/bin/python benchmarks/probe.py          # ~4 min on 2 cores; results/probe.json
    .venv/bin/python benchmarks/probe.py --smoke  # seconds: a tiny random model, toy rows

A yardstick for the soft prompts, not a method of the library: an L2-regularised logistic regression on
the frozen model's hidden states (mean over the prompt's tokens, or the last token, of one layer), trained on
the 50 train tweets. The layer, pooling and regularisation are chosen by leave-one-out cross-validation
on those 50 tweets; the dev figure of that choice is reported, and next to it the best dev figure over
all choices (an optimistic bound: it picks on dev).
"""

from __future__ import annotations

import argparse

import torch

import common

CONFIG = common.CONFIGS / "twitter_complaints" / "prompt_tuning.yaml"
STRENGTHS = [0.01, 0.1, 1.0]


@torch.no_grad()
def features(model, encoder, examples) -> torch.Tensor:
    """[N, 2, layers + 1, hidden]: per layer, the mean over the prompt's tokens and the last token's state."""
    out = []
    for example in examples:
        states = model(torch.tensor([example.prompt_ids]), output_hidden_states=True).hidden_states
        out.append(torch.stack([torch.stack([h[0].mean(0), h[0, -1]]) for h in states], dim=1))
    return torch.stack(out)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, strength: float):
    """L2-regularised logistic regression on standardised features; returns the scoring function."""
    mean, scale = x.mean(0), x.std(0) + 1e-5
    x = (x - mean) / scale
    weight = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200)

    def closure():
        optimizer.zero_grad()
        loss = (
            torch.nn.functional.binary_cross_entropy_with_logits(x @ weight + bias, y)
            + strength * weight.square().sum()
        )
        loss.backward()
        return loss

    optimizer.step(closure)
    return lambda z: ((z - mean) / scale) @ weight.detach() + bias.detach()


def macro_f1(predicted: torch.Tensor, gold: torch.Tensor) -> float:
    f1s = []
    for positive in (True, False):
        tp = ((predicted == positive) & (gold == positive)).sum().item()
        wrong = ((predicted != gold) & ((predicted == positive) | (gold == positive))).sum().item()
        f1s.append(2 * tp / max(2 * tp + wrong, 1))
    return sum(f1s) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", help="default: benchmarks/results/probe.json")
    common.add_smoke_argument(parser)
    args = parser.parse_args()
    if args.smoke is not None:
        common.start_smoke(args.smoke)
    train_file, dev_file = common.task_file("train"), common.task_file("dev")
    if common.absent(train_file, dev_file):
        return
    from softprompt.base_models import load_base_model, load_tokenizer
    from softprompt.data import RowTokenizer, load_table

    config = common.local_config(CONFIG, {"train_file": str(train_file), "calibration": None})
    tokenizer = load_tokenizer(config.model)
    encoder = RowTokenizer(tokenizer, config.task, config.task.label_names)
    train = encoder.encode_table(load_table(str(train_file)))
    dev = encoder.encode_table(load_table(str(dev_file)))
    model = load_base_model(config.model).eval()
    x_train, x_dev = features(model, encoder, train), features(model, encoder, dev)
    complaint = encoder.class_names.index("complaint")
    y_train = torch.tensor([float(e.label == complaint) for e in train])
    y_dev = torch.tensor([e.label == complaint for e in dev])

    results = []  # (leave-one-out macro-F1 on train, dev macro-F1, dev accuracy, description)
    for pooling, pooling_name in enumerate(["mean", "last-token"]):
        for layer in range(1, x_train.shape[2]):
            xt, xd = x_train[:, pooling, layer], x_dev[:, pooling, layer]
            for strength in STRENGTHS:
                left_out = torch.tensor(
                    [
                        fit_logistic(
                            torch.cat([xt[:i], xt[i + 1 :]]), torch.cat([y_train[:i], y_train[i + 1 :]]), strength
                        )(xt[i : i + 1]).item()
                        > 0
                        for i in range(len(train))
                    ]
                )
                predicted = fit_logistic(xt, y_train, strength)(xd) > 0
                results.append(
                    (
                        macro_f1(left_out, y_train.bool()),
                        macro_f1(predicted, y_dev),
                        (predicted == y_dev).float().mean().item(),
                        f"{pooling_name} layer {layer} L2 {strength}",
                    )
                )
    by_cv = max(results, key=lambda r: r[0])  # ties: the first
    by_dev = max(results, key=lambda r: r[1])
    print(
        f"chosen by leave-one-out on train: {by_cv[3]}: train LOO macro-F1 {by_cv[0]:.3f}, "
        f"dev macro-F1 {by_cv[1]:.3f}, dev accuracy {by_cv[2]:.3f}"
    )
    print(f"best on dev (optimistic):         {by_dev[3]}: dev macro-F1 {by_dev[1]:.3f}, dev accuracy {by_dev[2]:.3f}")
    keys = ("train_loo_macro_f1", "dev_macro_f1", "dev_accuracy", "features")
    out = common.write_json(
        common.results_path("probe.json", args.results),
        {
            "model": config.model,
            "chosen_by_train_loo": dict(zip(keys, by_cv)),
            "best_on_dev": dict(zip(keys, by_dev)),
            "all": [dict(zip(keys, r)) for r in results],
        },
        indent=1,
    )
    print(f"written: {out}")


if __name__ == "__main__":
    main()
