"""Classification metrics of predicted against gold class positions, as scikit-learn defines them.

Macro-F1 is the mean F1 over the classes that occur in the gold or the predicted labels (scikit-learn's
`f1_score(average="macro")` with its default labels): a class with no gold rows and no predictions does not
count. A prediction of -1 (a generation that named no label) is wrong for its row's class and is not a class.
"""

from __future__ import annotations


def classification_metrics(gold: list[int], predicted: list[int], class_names: list[str]) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix (a last column counts unmatched)."""
    k = len(class_names)
    confusion = [[0] * (k + 1) for _ in range(k)]  # [gold][predicted], column k: no label matched
    for g, p in zip(gold, predicted):
        confusion[g][p if 0 <= p < k else k] += 1
    per_class, f1s = {}, []
    for c, name in enumerate(class_names):
        true_positive = confusion[c][c]
        predicted_c = sum(confusion[g][c] for g in range(k))
        gold_c = sum(confusion[c])
        precision = true_positive / predicted_c if predicted_c else 0.0
        recall = true_positive / gold_c if gold_c else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": gold_c}
        if gold_c or predicted_c:  # a class that occurs
            f1s.append(f1)
    total = len(gold)
    return {
        "accuracy": sum(confusion[c][c] for c in range(k)) / total if total else 0.0,
        "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0,
        "unmatched": sum(row[k] for row in confusion),
        "per_class": per_class,
        "confusion": confusion,
        "count": total,
    }
