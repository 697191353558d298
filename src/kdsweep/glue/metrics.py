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


def dev_accuracy(prediction) -> dict:
    """The Trainer's compute_metrics for training.best_metric: accuracy (logged as eval_accuracy):
    the share of dev examples whose largest logit is the gold label. `prediction`: the Trainer's
    EvalPrediction (predictions: the logits, label_ids: the labels)."""
    logits = prediction.predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": float(np.mean(np.argmax(logits, axis=-1) == np.asarray(prediction.label_ids)))}


def training_metrics(train_cfg: dict):
    """The compute_metrics a GLUE training needs for its `training` block: dev_accuracy when
    best_metric is accuracy, else None (the eval loss needs none)."""
    return dev_accuracy if train_cfg.get("best_metric") == "accuracy" else None


BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 12345  # fixed (as sacrebleu's), so an evaluation rerun gives the same interval


def bootstrap_intervals(
    labels, predictions, num_labels: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> dict:
    """95 % percentile-bootstrap intervals of accuracy and macro-F1: the examples resampled with
    replacement `resamples` times, each metric recomputed on every resample (macro-F1 as
    classification_metrics counts it), the 2.5th and 97.5th percentiles. {accuracy: [lo, hi],
    macro_f1: [lo, hi], resamples, seed, level, method}."""
    y, p = np.asarray(labels, dtype=np.int16), np.asarray(predictions, dtype=np.int16)
    rng = np.random.default_rng(seed)
    accuracy, macro = np.empty(resamples), np.empty(resamples)
    block = max(1, 4_000_000 // max(y.size, 1))  # resamples per block: ~4M indices at a time (QQP dev: 40k)
    for start in range(0, resamples, block):
        idx = rng.integers(0, y.size, size=(min(block, resamples - start), y.size))
        ys, ps = y[idx], p[idx]  # (resamples in this block, examples)
        accuracy[start : start + len(idx)] = (ys == ps).mean(axis=1)
        f1 = np.zeros((len(idx), num_labels))
        for k in range(num_labels):
            tp = ((ps == k) & (ys == k)).sum(axis=1)
            fp = ((ps == k) & (ys != k)).sum(axis=1)
            fn = ((ps != k) & (ys == k)).sum(axis=1)
            denom = 2 * tp + fp + fn
            f1[:, k] = np.divide(2 * tp, denom, out=np.zeros(len(idx)), where=denom > 0)
        macro[start : start + len(idx)] = f1.mean(axis=1)

    def interval(values: np.ndarray) -> list[float]:
        lo, hi = np.percentile(values, [2.5, 97.5])
        return [float(lo), float(hi)]

    return {
        "accuracy": interval(accuracy),
        "macro_f1": interval(macro),
        "resamples": resamples,
        "seed": seed,
        "level": 0.95,
        "method": "percentile bootstrap over examples",
    }
