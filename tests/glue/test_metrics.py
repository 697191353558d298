import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from kdsweep.glue.metrics import classification_metrics


@pytest.mark.parametrize("seed", range(5))
def test_metrics_agree_with_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=200)
    p = np.where(rng.random(200) < 0.6, y, rng.integers(0, 3, size=200))
    m = classification_metrics(y, p, ["entailment", "neutral", "contradiction"])
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    per_class = f1_score(y, p, average=None, labels=[0, 1, 2])
    assert list(m["per_class_f1"].values()) == pytest.approx(list(per_class))
    assert m["n"] == 200


def test_constant_predictor_like_the_study_at_lr_2e_9():
    # Predicting one class of two: accuracy = its share, macro-F1 far lower (QQP 2e-9: 63.18 / 38.72).
    y = np.array([0] * 63 + [1] * 37)
    p = np.zeros(100, dtype=int)
    m = classification_metrics(y, p, ["not_duplicate", "duplicate"])
    assert m["accuracy"] == pytest.approx(0.63)
    assert m["per_class_f1"]["duplicate"] == 0.0
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
    assert m["macro_f1"] == pytest.approx((2 * 63 / (2 * 63 + 37)) / 2)


def test_mismatched_lengths_fail():
    with pytest.raises(ValueError, match="equally many"):
        classification_metrics([0, 1], [0], ["a", "b"])


def resampled_sklearn(y, p, resamples, seed, num_labels):
    """The bootstrap distribution computed with scikit-learn's metrics on each resample (drawn as
    bootstrap_intervals draws them: one block of indices per resample from the same generator)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, y.size, size=(resamples, y.size))
    labels = list(range(num_labels))
    acc = [accuracy_score(y[i], p[i]) for i in idx]
    f1 = [f1_score(y[i], p[i], average="macro", labels=labels, zero_division=0) for i in idx]
    return np.percentile(acc, [2.5, 97.5]), np.percentile(f1, [2.5, 97.5])


def test_bootstrap_intervals_are_scikit_learns_metrics_on_the_resamples():
    """The vectorized accuracy and macro-F1 of every resample are scikit-learn's, so the interval is."""
    from kdsweep.glue.metrics import bootstrap_intervals

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, size=300)
    p = np.where(rng.random(300) < 0.6, y, rng.integers(0, 3, size=300))
    p[p == 2] = 1  # class 2 never predicted: its F1 is 0, as scikit-learn's zero_division=0
    ci = bootstrap_intervals(y, p, 3, resamples=300, seed=5)
    acc, f1 = resampled_sklearn(y, p, 300, 5, 3)
    assert ci["accuracy"] == pytest.approx(list(acc)) and ci["macro_f1"] == pytest.approx(list(f1))


def test_bootstrap_intervals_cover_the_true_accuracy_as_often_as_they_claim():
    """Classifiers of known accuracy 0.7 on 300 fresh examples each: the 95 % interval holds 0.7 in
    about 95 % of 200 samples (a binomial 95 % band: 0.91..0.98), and its width is the normal
    approximation's 2 x 1.96 x sqrt(a (1 - a) / n) within 15 %."""
    from kdsweep.glue.metrics import bootstrap_intervals

    rng, n, truth, covered, widths = np.random.default_rng(0), 300, 0.7, 0, []
    for _ in range(200):
        y = rng.integers(0, 2, size=n)
        p = np.where(rng.random(n) < truth, y, 1 - y)
        lo, hi = bootstrap_intervals(y, p, 2, resamples=400, seed=int(rng.integers(1 << 30)))["accuracy"]
        covered += lo <= truth <= hi
        acc = np.mean(y == p)
        widths.append((hi - lo) / (2 * 1.96 * np.sqrt(acc * (1 - acc) / n)))
    assert 0.91 <= covered / 200 <= 0.98, covered
    assert np.mean(widths) == pytest.approx(1.0, abs=0.15)
