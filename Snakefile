# kdsweep: knowledge distillation, from data preparation to the study's tables.
#
#   snakemake --cores 2                                    the embedded demo (config/demo.yaml)
#   snakemake --cores 2 --configfile config/config.yaml    the study
#
# The config is validated against workflow/schemas/config.schema.yaml (defaults filled in)
# before any job is planned. Rules are thin: each calls a stage of the kdsweep package.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from kdsweep.core.config import check_config_files  # noqa: E402
from kdsweep.families import validate_config  # noqa: E402

if not config:  # nothing given with --configfile/--config: run the embedded demo

    configfile: "config/demo.yaml"


# Duplicate keys, which Snakemake's own YAML reading keeps silently, fail naming file and line.
check_config_files(workflow.configfiles)
validate_config(
    config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
)


include: "workflow/rules/common.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/distill.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        report_outputs(),
