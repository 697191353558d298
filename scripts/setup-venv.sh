#!/usr/bin/env bash
# Create (or reuse) the project's two virtual environments with their pinned dependencies:
#   VENV        the main one: kdsweep and everything its stages import (requirements/lock.txt)
#   VENV-comet  COMET's own (requirements/comet.txt): unbabel-comet caps numpy < 2, transformers < 5
#               and huggingface-hub < 1, so it cannot share the main environment; the rule
#               score_comet runs its interpreter (translation.evaluate.comet.python in the config).
# torch is installed first and alone in each: an unpinned torch pulled in by another package would
# fetch the CUDA build; with torch==2.13.0 already present, the rest leaves it alone.
# Usage: scripts/setup-venv.sh [VENV_DIR]   (default .venv; KDSWEEP_PYTHON picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
python=${KDSWEEP_PYTHON:-python3}

# build DIR LOCK [editable]: the venv DIR with torch, then LOCK; "editable" installs kdsweep too.
build() {
  local dir=$1 lock=$2 self=${3:-}
  local stamp="$dir/.kdsweep-requirements.sha256"
  local want
  want=$(cat requirements/torch.txt "$lock" pyproject.toml | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$dir/bin/python" ]; then
    echo "setup-venv: $dir is up to date"
    return
  fi
  echo "setup-venv: building $dir (torch first, then $lock)"
  # From empty: installing a new lock over an old one would keep the packages that left it
  # (unbabel-comet and its numpy < 2 cap in a .venv made before COMET moved out), and pip check fails.
  "$python" -m venv --clear "$dir"
  "$dir/bin/python" -m pip install --quiet --upgrade "pip==25.3"
  "$dir/bin/python" -m pip install --quiet -r requirements/torch.txt
  "$dir/bin/python" -m pip install --quiet -r "$lock"
  if [ "$self" = editable ]; then
    "$dir/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e .
  fi
  "$dir/bin/python" -m pip check
  echo "$want" >"$stamp"
  echo "setup-venv: $dir done ($("$dir/bin/python" -c 'import torch, transformers, numpy; print("torch", torch.__version__, "transformers", transformers.__version__, "numpy", numpy.__version__)'))"
}

build "$venv" requirements/lock.txt editable
# kdsweep is not installed here (its dependencies are the main environment's): score_comet puts
# the repository's src/ on PYTHONPATH, as it does in the conda environment envs/comet.yaml.
build "$venv-comet" requirements/comet.txt
