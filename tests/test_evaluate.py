"""Label scoring equals a one-row-at-a-time reference; metrics match hand counts; generated text maps to labels."""

import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from softprompt import PrefixTuningConfig, PromptTuningConfig, get_peft_model
from softprompt.data import RowTokenizer, TaskSpec
from softprompt.inference.metrics import classification_metrics
from softprompt.task_types.causal_lm import classify_by_generation, match_label, score_labels
from tiny_run import make_tiny_model_folder, toy_rows

NAMES = ["Unlabeled", "complaint", "no complaint"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = make_tiny_model_folder(tmp_path_factory.mktemp("tiny"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoder = RowTokenizer(tokenizer, TaskSpec(label_names=NAMES), NAMES)
    examples = [encoder.encode(row) for row in toy_rows(7, seed=3)]
    return folder, encoder, examples


@pytest.mark.parametrize(
    "config",
    [PromptTuningConfig(num_virtual_tokens=3), PrefixTuningConfig(num_virtual_tokens=3)],
    ids=["prompt", "prefix"],
)
def test_batched_label_scores_equal_one_row_at_a_time(setup, config):
    folder, encoder, examples = setup
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder), config).eval()
    scores = score_labels(model, encoder, examples, batch_size=3, progress=False)
    for i, example in enumerate(examples):
        for k in range(2):
            target = encoder.target_ids(k)
            ids = torch.tensor([example.prompt_ids + target])
            with torch.no_grad():
                log_probs = model(input_ids=ids).logits[0].log_softmax(-1)
            start = len(example.prompt_ids)
            reference = sum(log_probs[start - 1 + j, t].item() for j, t in enumerate(target))
            assert scores[i, k].item() == pytest.approx(reference, abs=1e-4)


def test_generation_classifier_returns_labels_or_unmatched(setup):
    folder, encoder, examples = setup
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(folder), PromptTuningConfig(num_virtual_tokens=3)
    ).eval()
    predictions, texts = classify_by_generation(model, encoder, examples, batch_size=4, progress=False)
    assert len(predictions) == len(examples) == len(texts)
    assert all(p in (-1, 0, 1) for p in predictions)
    assert all(p == match_label(t, ["complaint", "no complaint"]) for p, t in zip(predictions, texts))


def test_match_label():
    labels = ["complaint", "no complaint"]
    assert match_label(" complaint", labels) == 0
    assert match_label("No Complaint\n", labels) == 1
    assert match_label("no complaint, really", labels) == 1  # longest label it starts with
    assert match_label("maybe", labels) == -1


def test_metrics_match_hand_counts():
    gold = [0, 0, 0, 1, 1, 1, 1]
    predicted = [0, 1, -1, 1, 1, 0, 1]
    m = classification_metrics(gold, predicted, ["a", "b"])
    assert m["confusion"] == [[1, 1, 1], [1, 3, 0]]
    assert m["accuracy"] == pytest.approx(4 / 7)
    assert m["unmatched"] == 1
    pa, ra = 1 / 2, 1 / 3
    pb, rb = 3 / 4, 3 / 4
    fa, fb = 2 * pa * ra / (pa + ra), 2 * pb * rb / (pb + rb)
    assert m["per_class"]["a"]["precision"] == pytest.approx(pa) and m["per_class"]["a"]["recall"] == pytest.approx(ra)
    assert m["macro_f1"] == pytest.approx((fa + fb) / 2)


@pytest.mark.parametrize("seed", range(20))
def test_metrics_equal_scikit_learns_on_random_labels(seed):
    """Random gold and predictions over 6 classes, some absent from both, some from one; unmatched predictions."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    rng = random.Random(seed)
    classes = 6
    used = rng.sample(range(classes), rng.randint(1, classes))  # the others occur nowhere
    gold = [rng.choice(used) for _ in range(rng.randint(1, 40))]
    predicted = [rng.choice(used + [-1]) if rng.random() < 0.3 else g for g in gold]
    m = classification_metrics(gold, predicted, [f"c{i}" for i in range(classes)])
    occurring = sorted(set(gold) | {p for p in predicted if p >= 0})
    assert m["accuracy"] == pytest.approx(accuracy_score(gold, predicted))
    assert m["macro_f1"] == pytest.approx(f1_score(gold, predicted, labels=occurring, average="macro", zero_division=0))
    if -1 not in predicted:  # then scikit-learn's default labels are exactly the occurring classes
        assert m["macro_f1"] == pytest.approx(f1_score(gold, predicted, average="macro", zero_division=0))
    precision, recall, f1, support = precision_recall_fscore_support(
        gold, predicted, labels=list(range(classes)), zero_division=0
    )
    for c in range(classes):
        got = m["per_class"][f"c{c}"]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx(
            (precision[c], recall[c], f1[c], support[c])
        )


def test_eval_loss_from_label_scores_equals_the_teacher_forced_loss(setup):
    from softprompt.data import collate_training
    from softprompt.training import TrainConfig
    from softprompt.training.evaluation import evaluate_examples

    folder, encoder, examples = setup
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(folder), PromptTuningConfig(num_virtual_tokens=3)
    ).eval()
    config = TrainConfig(train_file="x.csv", eval_batch_size=3, progress=False)
    metrics = evaluate_examples(model, encoder, examples, config)
    batch = collate_training(examples, encoder.tokenizer.pad_token_id)
    with torch.no_grad():
        reference = model(**batch).loss.item()  # mean over all label tokens of the batch
    assert metrics["loss"] == pytest.approx(reference, abs=1e-4)
