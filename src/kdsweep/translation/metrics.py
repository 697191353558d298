"""Translation metrics: corpus BLEU and chrF with their sacrebleu signatures, their 95 % bootstrap
confidence intervals, and sacrebleu's paired bootstrap resampling test between two systems. COMET
runs in its own environment, in its own stage: kdsweep.translation.comet_score. Imports only
sacrebleu (in both environments): comet_score imports check_lengths from here."""

from __future__ import annotations

from sacrebleu.metrics import BLEU, CHRF


def check_lengths(**texts: list[str]) -> None:
    lengths = {name: len(values) for name, values in texts.items()}
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        got = ", ".join(f"{n} {name}" for name, n in lengths.items())
        raise ValueError(f"need equally many {', '.join(lengths)} (> 0), got {got}")


BOOTSTRAP_SAMPLES = 1000  # sacrebleu's default for bootstrap intervals and the paired bootstrap test


def bootstrap_interval(metric, hypotheses: list[str], references: list[str], samples: int) -> dict:
    """sacrebleu's own 95 % bootstrap interval of a corpus score (corpus_score(n_bootstrap=...):
    the sentences resampled with replacement, its seed fixed by SACREBLEU_SEED, default 12345):
    [mean - half-width, mean + half-width] as sacrebleu prints "mu = mean +- half-width", and the
    signature, which names the resamples and the seed."""
    score = metric.corpus_score(hypotheses, [references], n_bootstrap=samples)
    mean, half = float(score._mean), float(score._ci)
    return {"ci95": [mean - half, mean + half], "signature": metric.get_signature().format()}


def sacrebleu_scores(hypotheses: list[str], references: list[str], bootstrap: int = BOOTSTRAP_SAMPLES) -> dict:
    """Corpus BLEU and chrF (sacrebleu defaults, one reference per hypothesis) with their signatures
    and, with bootstrap > 1 resamples, their 95 % bootstrap intervals (bleu_ci95, chrf_ci95)."""
    check_lengths(hypotheses=hypotheses, references=references)
    bleu, chrf = BLEU(), CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf_score = chrf.corpus_score(hypotheses, [references])
    out = {
        "bleu": bleu_score.score,
        "bleu_signature": bleu.get_signature().format(),
        "chrf": chrf_score.score,
        "chrf_signature": chrf.get_signature().format(),
        "length_ratio": bleu_score.ratio,
        "hyp_len": bleu_score.sys_len,
        "ref_len": bleu_score.ref_len,
    }
    if bootstrap > 1:  # fresh metric objects: the plain signatures above stay without bs/seed
        for name, metric in (("bleu", BLEU()), ("chrf", CHRF())):
            ci = bootstrap_interval(metric, hypotheses, references, bootstrap)
            out |= {f"{name}_ci95": ci["ci95"], f"{name}_ci_signature": ci["signature"]}
    return out


SIGNIFICANCE_LEVEL = 0.05


def paired_test(
    baseline: list[str], system: list[str], references: list[str], samples: int = BOOTSTRAP_SAMPLES
) -> dict:
    """sacrebleu's paired bootstrap resampling test (Koehn 2004; sacrebleu.significance.PairedTest,
    test_type "bs") of `system` against `baseline` on the same sentences, for BLEU and chrF:
    {"bleu": {"p": p-value, "diff": system - baseline}, "chrf": {...}, "signatures": {...}}.
    Two identical outputs get p = 1: sacrebleu's statistic has no variance then and it would
    return 1 / (samples + 1), i.e. call them significantly different."""
    from sacrebleu.significance import PairedTest

    check_lengths(baseline=baseline, system=system, references=references)
    test = PairedTest(
        [("baseline", baseline), ("system", system)],
        {"bleu": BLEU(), "chrf": CHRF()},
        [references],
        test_type="bs",
        n_samples=samples,
    )
    signatures, results = test()
    out = {"signatures": {}}
    for name, key in (("bleu", "BLEU"), ("chrf", "chrF2")):
        base, sys_ = results[key]
        p = 1.0 if baseline == system else float(sys_.p_value)
        out[name] = {"p": p, "diff": float(sys_.score - base.score)}
        out["signatures"][name] = signatures[key].format()
    return out
