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
