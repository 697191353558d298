# kdsweep: knowledge distillation, from data preparation to the study's tables.
#
#   snakemake --cores 2                                    the embedded demo (config/demo.yaml)
#   snakemake --cores 2 --configfile config/config.yaml    the study
#   snakemake --profile slurm --configfile config/config.yaml   the study on a Slurm cluster
#
# The config is validated against workflow/schemas/config.schema.yaml (defaults filled in)
# before any job is planned. Rules are thin: each calls a stage of the kdsweep package. Each
# family's rules are in workflow/rules/<family>.smk, included when the config has its block.
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from kdsweep.cluster.slurm import (  # noqa: E402
    apply_profile_defaults,
    outlive_slurm_signals,
    uses_slurm_profile,
)
from kdsweep.core.config import check_config_files  # noqa: E402
from kdsweep.families import validate_config  # noqa: E402

if not config:  # nothing given with --configfile/--config: run the embedded demo

    configfile: Path(workflow.basedir) / "config" / "demo.yaml"


# Duplicate keys, which Snakemake's own YAML reading keeps silently, fail naming file and line.
check_config_files(workflow.configfiles)
validate_config(
    config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
)
# The Slurm profile's variables get their defaults (exported values win); under that profile only,
# the account is looked up in sacctmgr and the GPU settings are checked: a local run asks nothing
# of Slurm.
apply_profile_defaults(slurm=uses_slurm_profile(workflow.resource_settings))
outlive_slurm_signals()  # in a Slurm job: let training save its checkpoint on USR1/TERM


include: "workflow/rules/common.smk"


if ASSETS:

    include: "workflow/rules/assets.smk"


if GLUE:

    include: "workflow/rules/glue.smk"


if TR:

    include: "workflow/rules/translation.smk"


include: "workflow/rules/report.smk"


wildcard_constraints:
    task="|".join(TASKS) or "(?!)",
    point="|".join(re.escape(p) for p in {**POINTS, **TR_POINTS}) or "(?!)",


rule all:
    default_target: True
    input:
        REPORT["md"],
        REPORT["tables"],
        REPORT["plots"],
        REPORT["samples"],
