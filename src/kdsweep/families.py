"""The families kdsweep knows, and the one config validation that covers them all: the schema
and the shared checks (kdsweep.core.config), then each configured family's own checks. The
Snakefile, the CLI and the tests validate configs through here."""

from __future__ import annotations

from pathlib import Path

from kdsweep.core import config as core_config
from kdsweep.core.config import SCHEMA_PATH, read_config_file
from kdsweep.translation.config import check_config as check_translation

FAMILY_CHECKS = (check_translation,)  # GLUE has no checks beyond the shared ones


def validate_config(config: dict, schema_path: str | Path = SCHEMA_PATH) -> dict:
    """Validate `config` in place (defaults filled in) and return it; raise ConfigError."""
    return core_config.validate_config(config, schema_path, checks=FAMILY_CHECKS)


def load_config(path: str | Path, schema_path: str | Path = SCHEMA_PATH) -> dict:
    return validate_config(read_config_file(path), schema_path)
