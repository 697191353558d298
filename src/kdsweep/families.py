"""The families kdsweep knows, and what covers them all: the one config validation (the schema
and the shared checks of kdsweep.core.config, then each configured family's own checks) and the
report (kdsweep.core.report with each family's section). The Snakefile, the CLI and the tests
go through here; adding a family adds its entries below."""

from __future__ import annotations

from pathlib import Path

from kdsweep.core import config as core_config
from kdsweep.core import report as core_report
from kdsweep.core.config import SCHEMA_PATH, read_config_file
from kdsweep.core.paths import RunPaths
from kdsweep.glue import report as glue_report
from kdsweep.translation import report as translation_report
from kdsweep.translation.config import check_config as check_translation

FAMILY_CHECKS = (check_translation,)  # GLUE has no checks beyond the shared ones
REPORT_SECTIONS = {"glue": glue_report, "translation": translation_report}  # in report order


def validate_config(config: dict, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """Validate `config` in place (defaults filled in) and return it; raise ConfigError."""
    return core_config.validate_config(config, schema_path, checks=FAMILY_CHECKS)


def load_config(path: str | Path, schema_path: str | Path = SCHEMA_PATH) -> dict:
    return validate_config(read_config_file(path), schema_path)


def write_report(paths: RunPaths, spec: dict) -> Path:
    """report.md and every table, plot and sample file of the run (the report rule's job)."""
    return core_report.write_report(paths, spec, REPORT_SECTIONS)


def report_outputs(paths: RunPaths, spec: dict) -> dict[str, list[str]]:
    """What write_report writes for `spec`: the report rule's outputs."""
    return core_report.report_outputs(paths, spec, REPORT_SECTIONS)
