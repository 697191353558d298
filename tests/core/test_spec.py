"""kdsweep.core.spec: a stage's settings as one dataclass built from the rule's --spec JSON."""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from kdsweep.core.config import distill_points
from kdsweep.core.data import PrepareError
from kdsweep.core.spec import from_json, setting
from kdsweep.families import load_config
from kdsweep.glue.distill import GlueDistillSpec
from kdsweep.translation.data import PrepareTranslationSpec

DEMO = Path(__file__).parents[2] / "config" / "demo.yaml"


@dataclass
class Toy:
    size: int = setting("toy.size")
    seed: int = setting("toy.seed", default=0)


def test_an_unknown_key_fails_naming_it_and_the_known_ones():
    with pytest.raises(
        ValueError, match=r"^kdsweep toy --spec\.sed: not a setting of this stage \(known: seed, size\)$"
    ):
        from_json(Toy, {"size": 3, "sed": 1}, "kdsweep toy --spec")


def test_a_missing_required_key_fails_naming_it():
    with pytest.raises(ValueError, match=r"^kdsweep toy --spec\.size: missing \(toy\.size\)$"):
        from_json(Toy, {"seed": 1}, "kdsweep toy --spec")
    assert from_json(Toy, {"size": 3}, "kdsweep toy --spec") == Toy(size=3, seed=0)  # defaults fill the rest


def test_a_stage_check_names_its_config_key():
    with pytest.raises(PrepareError, match=r"^translation\.target_lang: 'en' is also the source language$"):
        from_json(PrepareTranslationSpec, {"source": "hub", "target_lang": "en"}, "kdsweep prepare-translation --spec")
    point = {"learning_rate": 1e-3, "alpha": 0.5}
    with pytest.raises(ValueError, match=r"^glue\.distill\.sweep: the point .* has no temperature$"):
        GlueDistillSpec(point=point, student={}, distill={}, max_length=32, eval_batch_size=8)


def rule_json(spec: dict) -> dict:
    """What a stage reads: the rule's as_json, parsed by the CLI."""
    return json.loads(json.dumps(spec, sort_keys=True))


def test_the_demo_distill_spec_round_trips():
    """The GLUE distill rule's JSON for the demo (as glue.smk builds it) is accepted and given back
    unchanged by asdict: the job record that decides resumes (train_and_save) stays the same."""
    glue = load_config(DEMO)["glue"]
    for point in distill_points(glue["distill"]).values():
        data = rule_json(
            {
                "point": point,
                "student": glue["student"],
                "distill": {k: v for k, v in glue["distill"].items() if k not in ("sweep", "experiments")},
                "max_length": glue["max_length"],
                "eval_batch_size": glue["evaluate"]["batch_size"],
            }
        )
        assert asdict(from_json(GlueDistillSpec, data, "kdsweep distill --spec")) == data


def test_the_demo_prepare_translation_spec_round_trips():
    tr = load_config(DEMO)["translation"]
    keys = PrepareTranslationSpec.__dataclass_fields__
    data = rule_json({k: v for k, v in tr.items() if k in keys})  # translation.smk's list of keys
    assert set(data) == set(keys)
    assert asdict(from_json(PrepareTranslationSpec, data, "kdsweep prepare-translation --spec")) == data


def test_the_cli_builds_the_stage_spec(tmp_path):
    """`python -m kdsweep <stage> --spec ...` runs the stage with its dataclass; a key the stage
    does not know fails before anything is written."""
    from kdsweep.cli import main

    spec = {"size": 20, "seed": 1, "file_stem": "toy"}
    main(["synthesize-europarl", "--out", str(tmp_path / "a"), "--spec", json.dumps(spec)])
    assert len((tmp_path / "a" / "toy.en").read_text().splitlines()) == 20
    with pytest.raises(ValueError, match=r"^kdsweep synthesize-europarl --spec\.stem: not a setting of this stage"):
        main(["synthesize-europarl", "--out", str(tmp_path / "b"), "--spec", json.dumps({**spec, "stem": "x"})])
    assert not (tmp_path / "b").exists()
