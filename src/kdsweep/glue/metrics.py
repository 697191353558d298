"""Classification metrics: accuracy, per-class F1 and macro-F1 (unweighted mean over classes,
a class absent from both labels and predictions counts as F1 = 0, as scikit-learn's default)."""

from __future__ import annotations

import numpy as np


def classification_metrics(labels, predictions, label_names: list[str] | tuple[str, ...]) -> dict:
    y, p = np.asarray(labels), np.asarray(predictions)
    if y.shape != p.shape or y.size == 0:
        raise ValueError(f"need equally many labels and predictions (> 0), got {y.shape} and {p.shape}")
    per_class = {}
    for k, name in enumerate(label_names):
        tp = int(np.sum((p == k) & (y == k)))
        fp = int(np.sum((p == k) & (y != k)))
        fn = int(np.sum((p != k) & (y == k)))
        denom = 2 * tp + fp + fn
        per_class[name] = 2 * tp / denom if denom else 0.0
    return {
        "n": int(y.size),
        "accuracy": float(np.mean(y == p)),
        "macro_f1": float(np.mean(list(per_class.values()))),
        "per_class_f1": per_class,
    }
