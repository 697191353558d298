"""Config loading, schema validation (with defaults) and sweep expansion.

The Snakefile validates the merged config with `validate_config` before any job is planned;
a bad value fails here with the offending key spelled out (e.g. `distill.sweep.alpha[0]`).
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:  # jsonschema is imported where a config is validated, not by every job
    import jsonschema

REPO_ROOT = Path(__file__).resolve().parents[3]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
SWEEP_AXES = ("learning_rate", "alpha", "temperature")  # the tables' axes; seeds are repeats of a point
_AXIS_TAGS = {"learning_rate": "lr", "alpha": "a", "temperature": "T"}
_LOSS_TAGS = {"forward_kl": "fkl", "reverse_kl": "rkl", "jsd": "jsd"}  # translation's KD loss kinds


class ConfigError(ValueError):
    pass


def _with_defaults(cls):
    """A validator that fills in `default` values under `properties` (as Snakemake's does)."""
    import jsonschema

    validate_properties = cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(cls, {"properties": set_defaults})


def _key_path(error: jsonschema.ValidationError) -> str:
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _best_message(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    # For oneOf/anyOf, report the most specific sub-error rather than "is not valid under any".
    import jsonschema

    return jsonschema.exceptions.best_match([error]) if error.context else error


def validate_config(config: dict, schema_path: str | Path = SCHEMA_PATH, checks=()) -> dict:
    """Validate `config` in place (defaults filled in) and return it; raise ConfigError. `checks`
    are the families' own (kdsweep.families.validate_config passes them), run after the shared ones."""
    import jsonschema

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator_cls = _with_defaults(jsonschema.validators.validator_for(schema))
    errors = sorted(validator_cls(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors:
            err = _best_message(err)
            lines.append(f"  {_key_path(err)}: {err.message}")
        raise ConfigError("invalid kdsweep config (" + str(schema_path) + "):\n" + "\n".join(lines))
    _check_consistency(config)
    for check in checks:
        check(config)
    return config


FAMILY_KINDS = {"glue": ("bert",), "translation": ("llama",)}  # model_from_config families per path


def _check_model_name(key: str, name: str, *, weights: bool, tokenizer: bool) -> None:
    """A model or tokenizer the config names is a hub name, or a local folder that is whole
    (kdsweep.core.integrity): a missing path fails here, not as a hub error jobs later."""
    from kdsweep.core.hub import is_repo_id
    from kdsweep.core.integrity import model_folder_problem

    if not Path(name).exists() and is_repo_id(name):
        return  # a hub name: prefetch_assets fetches it, or says it cannot
    if not Path(name).exists():
        raise ConfigError(
            f"{key}: {name!r} is neither an existing local folder nor a hub name (org/name: letters, digits, "
            "'-', '_', '.')"
        )
    problem = model_folder_problem(name, weights=weights, tokenizer=tokenizer)
    if problem:
        raise ConfigError(f"{key}: local folder {name}: {problem}")


def _check_inputs(config: dict) -> None:
    """What the config names outside itself: model and tokenizer folders, the prompt template,
    the COMET checkpoint, top_k against a local teacher's vocabulary."""

    for prefix, block in family_blocks(config).items():
        tasks = family_tasks(config, prefix)
        for role in ("teacher", "student"):
            model, tok = block[role]["model"], block[role].get("tokenizer")
            for task in tasks:
                if isinstance(model, str):
                    name = model.replace("{task}", task)
                    _check_model_name(f"{prefix}{role}.model", name, weights=True, tokenizer=tok is None)
                if isinstance(tok, str):
                    _check_model_name(f"{prefix}{role}.tokenizer", tok.replace("{task}", task), weights=False,
                                      tokenizer=True)  # fmt: skip


def _model_config(key: str, spec: dict) -> dict:
    """A model_from_config's settings, complete (the family's defaults filled in); a key the
    family's config does not have (a typo would silently keep the default) or settings it refuses
    fail naming the key."""
    import difflib

    from transformers import BertConfig, LlamaConfig

    cls = {"bert": BertConfig, "llama": LlamaConfig}[spec["family"]]
    known = cls().to_dict()
    for name in spec["config"]:
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{key}.config.{name}: not a setting of {cls.__name__}{hint}")
    try:
        full = cls(**spec["config"]).to_dict()
    except ValueError as e:
        raise ConfigError(f"{key}.config: {e}") from None
    heads, kv_heads = full["num_attention_heads"], full.get("num_key_value_heads") or full["num_attention_heads"]
    if full["hidden_size"] % heads or heads % kv_heads:  # what the model's constructor would refuse
        raise ConfigError(
            f"{key}.config: hidden_size {full['hidden_size']} must be a multiple of num_attention_heads {heads}, "
            f"and that of num_key_value_heads {kv_heads}"
        )
    return full


def _model_settings(key: str, model) -> dict | None:
    """The transformers config of a model the config names: built from its settings, or read
    from a local folder's config.json; None for a hub name (not known before it is fetched)."""
    if isinstance(model, dict) and "family" in model:
        return _model_config(key, model)
    if isinstance(model, str) and (Path(model) / "config.json").is_file():
        return json.loads((Path(model) / "config.json").read_text())
    return None


def _check_models(config: dict) -> None:
    """What can be known of the models before any job: max_length within the teacher's and
    student's positions, a student's teacher layers within the teacher's."""
    for prefix, block in family_blocks(config).items():
        max_length, length_key = block["max_length"], f"{prefix}max_length"
        tasks = family_tasks(config, prefix)
        settings = {}
        for role in ("teacher", "student"):
            model = block[role]["model"]
            for task in tasks:
                name = model.replace("{task}", task) if isinstance(model, str) else model
                settings[role] = _model_settings(f"{prefix}{role}.model", name)
                positions = (settings[role] or {}).get("max_position_embeddings")
                if positions and max_length > positions:
                    raise ConfigError(
                        f"{length_key}: {max_length} tokens, but {prefix}{role}.model has max_position_embeddings "
                        f"{positions}: pairs longer than that would fail mid-job"
                    )
        layers = (block["student"]["model"].get("from_teacher") or {}).get("layers") if isinstance(
            block["student"]["model"], dict
        ) else None  # fmt: skip
        depth = (settings.get("teacher") or {}).get("num_hidden_layers")
        if layers and depth and max(layers) >= depth:
            raise ConfigError(
                f"{prefix}student.model.from_teacher.layers: {layers} out of range, the teacher has {depth} layers"
            )


def _check_sweeps(config: dict) -> None:
    """Sweep values that make the same job id (6 significant digits) would silently be one job."""
    for prefix, block in family_blocks(config).items():
        lists = {f"{prefix}distill.sweep.{axis}": block["distill"]["sweep"][axis] for axis in SWEEP_AXES}
        for axis in ("alpha", "temperature"):
            exp = block["distill"].get("experiments", {}).get(axis)
            if exp:
                lists[f"{prefix}distill.experiments.{axis}.values"] = exp["values"]
        for key, values in lists.items():
            seen: dict[str, float] = {}
            for v in map(float, values):
                tag = f"{v:g}"
                if tag in seen and seen[tag] != v:
                    raise ConfigError(
                        f"{key}: {seen[tag]!r} and {v!r} would be one job ({tag}: job ids keep 6 significant "
                        "digits); use values that differ there"
                    )
                seen[tag] = v


def _check_places(config: dict) -> None:
    results = Path(config["results_dir"])
    if results.exists() and not results.is_dir():
        raise ConfigError(f"results_dir: {results} exists and is not a folder")
    for prefix, block in family_blocks(config).items():
        path = block["distill"]["distributed"]["deepspeed_config"]
        if path is None:
            continue
        key = f"{prefix}distill.distributed.deepspeed_config"
        if not Path(path).is_file():
            raise ConfigError(f"{key}: {path} is not a file")
        try:
            if not isinstance(json.loads(Path(path).read_text()), dict):
                raise ConfigError(f"{key}: {path} does not hold a JSON object")
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{key}: {path} is not valid JSON ({e})") from None


def _check_consistency(config: dict) -> None:
    _check_places(config)
    _check_inputs(config)
    for prefix, block in family_blocks(config).items():
        teacher = block["teacher"]
        if isinstance(teacher["model"], dict) and not teacher["finetune"]["enabled"]:
            raise ConfigError(
                f"{prefix}teacher.finetune.enabled: a teacher built from a config (teacher.model.family) has "
                "random weights and must be trained; set it to true or name a fine-tuned model"
            )
        kind = prefix.rstrip(".")
        for role in ("teacher", "student"):
            model = block[role]["model"]
            if isinstance(model, dict) and "family" in model and model["family"] not in FAMILY_KINDS[kind]:
                raise ConfigError(
                    f"{prefix}{role}.model.family: {model['family']!r} cannot be used for {kind}; "
                    f"one of {list(FAMILY_KINDS[kind])}"
                )
    _check_models(config)
    _check_sweeps(config)
    _check_keep(config)


def training_blocks(config: dict) -> dict[str, dict]:
    """Every `training` block of the config, keyed by its key path (teacher fine-tuning's and
    distillation's, per family)."""
    blocks = {}
    for prefix, block in family_blocks(config).items():
        blocks[f"{prefix}teacher.finetune.training"] = block["teacher"]["finetune"]["training"]
        blocks[f"{prefix}distill.training"] = block["distill"]["training"]
    return blocks


def _check_keep(config: dict) -> None:
    """keep: best needs a checkpoint at every evaluation: Hugging Face (load_best_model_at_end)
    asks save_steps to be a multiple of eval_steps, but it tracks the best metric over every
    evaluation and loads the best step's checkpoint only if one was saved there: a best step
    between two saves would leave it loading an older checkpoint, or none. So save_steps = eval_steps."""
    for key, training in training_blocks(config).items():
        if training["keep"] == "best" and training["save_steps"] != training["eval_steps"]:
            raise ConfigError(
                f"{key}.save_steps: {training['save_steps']} with keep: best must equal {key}.eval_steps "
                f"({training['eval_steps']}): the best evaluation's weights are loaded from the checkpoint "
                "saved at its step"
            )
        if training["keep"] == "best" and training["save_total_limit"] < 2:
            raise ConfigError(
                f"{key}.save_total_limit: {training['save_total_limit']} with keep: best must be at least 2: "
                "Hugging Face keeps the best checkpoint and deletes the others down to the limit, so with 1 a "
                "job stopped by a signal would lose the checkpoint it has just saved (and resume from the best)"
            )


def family_blocks(config: dict) -> dict[str, dict]:
    """The experiment families a config runs, keyed by their key prefix in error messages
    ("glue.", "translation."): each family's settings, with its teacher/student/distill blocks."""
    return {f"{name}.": config[name] for name in ("glue", "translation") if name in config}


def family_tasks(config: dict, prefix: str) -> list[str]:
    """The tasks of the family at `prefix`: GLUE's configured tasks, or the one translation pair."""
    return config["glue"]["tasks"] if prefix == "glue." else [translation_task(config)]


def training_block(**over) -> dict:
    """A `training` block as the schema fills it (its defaults), with `over` set: for code that
    builds a Trainer outside a workflow config (benchmarks, tests)."""
    config = {
        "run_name": "training",
        "translation": {
            "source": "synthetic",
            "teacher": {"model": "unused"},
            "student": {"model": "unused"},
            "distill": {"sweep": {"learning_rate": [1e-3]}, "training": over},
        },
    }
    return validate_config(config)["translation"]["distill"]["training"]


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML keeps the last one silently:
    a pasted second `training:` block would replace the first)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (first on line {seen[key] + 1})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_config_file(path: str | Path) -> dict:
    """A config file's YAML, strictly: a duplicate key or a syntax error raises ConfigError naming
    the file and line."""
    try:
        with open(path) as f:  # a stream: YAML's error marks name the file
            return yaml.load(f, Loader=_StrictLoader) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: {e}") from None


def check_config_files(paths) -> None:
    """Snakemake reads --configfile itself (keeping the last of duplicate keys): read each again strictly."""
    for path in paths:
        read_config_file(path)


def point_id(point: dict) -> str:
    """Readable, path-safe id of a distillation run: lr2e-05_a0.5_T2_s42; an experiment's run that
    changes the loss or the student's initialization says so: lr2e-05_a1_T2_cos0_s42, ..._rand_s42
    (GLUE), lr0.003_a0.5_T1_rkl_bucket_s42 (translation: the KD loss kind and the tail option).
    The training seed comes last (a point without one, e.g. an experiment's row, has no _s)."""
    out = "_".join(f"{_AXIS_TAGS[axis]}{point[axis]:g}" for axis in SWEEP_AXES)
    if "cosine_weight" in point:
        out += f"_cos{point['cosine_weight']:g}"
    out += "_rand" if point.get("init") == "random" else ""
    out += f"_{_LOSS_TAGS[point['loss']]}" if "loss" in point else ""
    out += f"_{point['tail']}" if "tail" in point else ""
    return out + (f"_s{point['seed']}" if "seed" in point else "")


def sweep_seeds(distill: dict) -> list[int]:
    """The training seeds of a `distill` block: sweep.seed, or its training.seed alone."""
    seeds = distill["sweep"].get("seed")
    return [int(s) for s in seeds] if seeds else [int(distill["training"]["seed"])]


def seeded_runs(point: dict, seeds: list[int]) -> dict[str, dict]:
    """A point's runs, one per seed, by id."""
    runs = [{**point, "seed": seed} for seed in seeds]
    return {point_id(run): run for run in runs}


def training_seed(train_cfg: dict, point: dict) -> dict:
    """A `training` block with the run's seed (sweep.seed) in place of its own (the workflow's
    jobs get their training block without one: workflow/rules/common.smk, distill_settings)."""
    seed = point.get("seed", train_cfg.get("seed"))
    return train_cfg if seed is None else {**train_cfg, "seed": int(seed)}  # None: a spec written by hand


def sweep_points(distill: dict) -> dict[str, dict]:
    """All distillation jobs of a `distill` block's sweep: {run id: {learning_rate, alpha,
    temperature, seed}}, the seeds innermost."""
    sweep, seeds = distill["sweep"], sweep_seeds(distill)
    points = {}
    for values in itertools.product(*(sweep[axis] for axis in SWEEP_AXES)):
        points.update(seeded_runs(dict(zip(SWEEP_AXES, map(float, values), strict=True)), seeds))
    return points


EXPERIMENTS = {
    "alpha": "Alpha sweep",
    "temperature": "Temperature sweep",
    "ablation": "Loss ablation",
    "loss": "KD loss kind",
}


def experiment_base(distill: dict) -> dict[str, float]:
    """The run the experiments vary: experiments.learning_rate (default: the sweep's first),
    the sweep's first alpha and temperature."""
    sweep, lr = distill["sweep"], distill["experiments"]["learning_rate"]
    return {
        "learning_rate": float(lr if lr is not None else sweep["learning_rate"][0]),
        "alpha": float(sweep["alpha"][0]),
        "temperature": float(sweep["temperature"][0]),
    }


def experiment_tables(distill: dict) -> dict[str, dict[str, dict]]:
    """The extra experiments switched on in a `distill` block, as {experiment: {row label:
    point}}: one-axis alpha and temperature sweeps around experiment_base (both families);
    GLUE's DistilBERT loss ablation (KD only, + hidden-state cosine, + CE on the labels, and the
    last with a randomly initialized student); translation's KD loss kinds x tail options. A
    point keeps `cosine_weight`, `loss` or `tail` only where it differs from the block's own, so
    a row equal to a sweep point is the same run (and the same job). The points have no seed:
    each row runs once per sweep seed (distill_points, seeded_runs)."""
    exp, base = distill["experiments"], experiment_base(distill)
    tables: dict[str, dict[str, dict]] = {}
    for axis in ("alpha", "temperature"):
        if exp[axis]["enabled"]:
            tables[axis] = {f"{v:g}": {**base, axis: float(v)} for v in exp[axis]["values"]}
    if exp.get("loss", {}).get("enabled"):
        rows = {}
        for kind, tail in itertools.product(exp["loss"]["values"], exp["loss"]["tails"]):
            point = {**base, "loss": kind, "tail": tail}
            for key in ("loss", "tail"):
                if point[key] == distill[key]:
                    del point[key]
            rows[f"{kind}, tail {tail}"] = point
        tables["loss"] = rows
    if exp.get("ablation", {}).get("enabled"):
        w = float(exp["ablation"]["cosine_weight"])
        rows = {
            "KD only": {**base, "alpha": 1.0, "cosine_weight": 0.0},
            "KD + hidden cosine": {**base, "alpha": 1.0, "cosine_weight": w},
            "KD + hidden cosine + CE": {**base, "cosine_weight": w},
            "KD + hidden cosine + CE, random init": {**base, "cosine_weight": w, "init": "random"},
        }
        for point in rows.values():
            if point["cosine_weight"] == distill["cosine_weight"]:
                del point["cosine_weight"]
        tables["ablation"] = rows
    return tables


def distill_points(distill: dict) -> dict[str, dict]:
    """Every distillation job of a `distill` block: the sweep and the experiments' runs (each row
    once per seed), by id."""
    points, seeds = dict(sweep_points(distill)), sweep_seeds(distill)
    for rows in experiment_tables(distill).values() if "experiments" in distill else ():
        for p in rows.values():
            points.update(seeded_runs(p, seeds))
    return points


def swept_axes(distill: dict) -> list[str]:
    """Axes of a `distill` block with more than one value (learning_rate always: the study's table)."""
    sweep = distill["sweep"]
    return [a for a in SWEEP_AXES if a == "learning_rate" or len(sweep[a]) > 1]


def translation_task(config: dict) -> str:
    """The translation family's name in paths, e.g. europarl_en_fr."""
    tr = config["translation"]
    return f"europarl_{tr['source_lang']}_{tr['target_lang']}"


def run_root(config: dict) -> str:
    return str(Path(config["results_dir"], config["run_name"]))
