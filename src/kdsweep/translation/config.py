"""The translation family's config checks beyond the schema, each failing with the config key:
languages and prompt, top_k against a local teacher's vocabulary, the COMET checkpoint, and
temperatures a top-k cache cannot serve exactly. Run by kdsweep.families.validate_config after
the shared checks (kdsweep.core.config)."""

from __future__ import annotations

import json
from pathlib import Path

from kdsweep.core.config import ConfigError
from kdsweep.core.hub import is_repo_id
from kdsweep.translation.prompt import Prompt, PromptError


def check_config(config: dict) -> None:
    tr = config.get("translation")
    if not tr:
        return
    if tr["source_lang"] == tr["target_lang"]:
        raise ConfigError(f"translation.target_lang: {tr['target_lang']!r} is also the source language")
    if tr["prompt"]["template"] is None and (tr["source_lang"], tr["target_lang"]) != ("en", "fr"):
        raise ConfigError(
            f"translation.prompt.template: null is the study's prompt, which asks for a translation from English "
            f"to French; write a template for {tr['source_lang']} -> {tr['target_lang']}"
        )
    if tr["prompt"]["template"] is not None:
        try:
            Prompt(template=tr["prompt"]["template"])
        except PromptError as e:
            raise ConfigError(f"translation.{e}") from None
    teacher, top_k = tr["teacher"]["model"], tr["teacher"]["cache"]["top_k"]
    if (
        tr["teacher"]["cache"]["method"] == "topk"
        and isinstance(teacher, str)
        and (Path(teacher) / "config.json").is_file()
    ):
        vocab = json.loads((Path(teacher) / "config.json").read_text()).get("vocab_size")
        if vocab and top_k > vocab:
            raise ConfigError(
                f"translation.teacher.cache.top_k: {top_k} is larger than the teacher's vocabulary ({vocab} tokens, "
                f"{teacher}/config.json); top_k = {vocab} caches every token"
            )
    for key in ("teacher.finetune.training", "distill.training"):
        training = tr["teacher"]["finetune"]["training"] if key.startswith("teacher") else tr["distill"]["training"]
        if training["best_metric"] == "accuracy":
            raise ConfigError(
                f"translation.{key}.best_metric: accuracy is GLUE's; translation compares eval_loss (the "
                "student's cross-entropy on the dev responses; BLEU is not computed during training)"
            )
    comet = tr["evaluate"]["comet"]
    name = comet["model"]
    if comet["enabled"] and not Path(name).exists() and (name.endswith(".ckpt") or not is_repo_id(name)):
        raise ConfigError(
            f"translation.evaluate.comet.model: {name!r} is neither an existing local checkpoint nor a hub name"
        )
    check_distill_temperatures(tr)


def check_distill_temperatures(tr: dict) -> None:
    """A sampled cache serves forward KL at its sampling temperature only; a top-k cache holds the
    teacher at temperature 1 only (another needs allow_tempered_topk). Checked for the sweep and
    for the experiments switched on, naming the key of the value refused."""
    cache, distill = tr["teacher"]["cache"], tr["distill"]
    exp = distill.get("experiments", {})
    key = "translation.distill."
    temperatures = [(f"{key}sweep.temperature", t) for t in distill["sweep"]["temperature"]]
    losses, tails = [(f"{key}loss", distill["loss"])], [(f"{key}tail", distill["tail"])]
    if exp.get("temperature", {}).get("enabled"):
        temperatures += [(f"{key}experiments.temperature.values", t) for t in exp["temperature"]["values"]]
    if exp.get("loss", {}).get("enabled"):
        losses += [(f"{key}experiments.loss.values", v) for v in exp["loss"]["values"]]
        tails += [(f"{key}experiments.loss.tails", v) for v in exp["loss"]["tails"]]
    if cache["method"] == "sampled":
        other = [(k, t) for k, t in temperatures if float(t) != float(cache["temperature"])]
        if other:
            k, t = other[0]
            raise ConfigError(
                f"{k}: {t:g} with a sampled teacher cache drawn at "
                f"temperature {cache['temperature']:g} (translation.teacher.cache.temperature): the draws estimate "
                "the KD target at their own temperature only. Sweep the cache's temperature, or set "
                "translation.teacher.cache.temperature to the one you distill at"
            )
        for k, loss in losses:
            if loss != "forward_kl":
                raise ConfigError(
                    f"{k}: {loss} with a sampled teacher cache, which estimates "
                    "forward_kl only (the others need the teacher's probability of every token)"
                )
        for k, tail in tails:
            if tail != "ignore":
                raise ConfigError(f"{k}: {tail} applies to a top-k cache; a sampled cache has no tail")
        return
    tempered = [(k, t) for k, t in temperatures if t != 1]
    if tempered and not distill["allow_tempered_topk"]:
        k, t = tempered[0]
        raise ConfigError(
            f"{k}: {t:g} with a top-k teacher cache, which holds "
            "the teacher at temperature 1 only: its tail cannot be tempered exactly and the KD loss is far "
            "from the dense one at T != 1 (benchmarks/README.md). Use temperature 1, set "
            "translation.distill.allow_tempered_topk: true to accept the bias, or use a sampled cache "
            "(translation.teacher.cache.method: sampled) drawn at that temperature"
        )
