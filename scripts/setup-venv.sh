#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment with the pinned dependencies.
# torch is installed first and alone: an unpinned torch pulled in by another package would
# fetch the CUDA build; with torch==2.13.0 already present, the rest leaves it alone.
# Usage: scripts/setup-venv.sh [VENV_DIR]   (default .venv; KDSWEEP_PYTHON picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
python=${KDSWEEP_PYTHON:-python3}
stamp="$venv/.kdsweep-requirements.sha256"
want=$(cat requirements/torch.txt requirements/lock.txt pyproject.toml | sha256sum | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$venv/bin/python" ]; then
  echo "setup-venv: $venv is up to date"
  exit 0
fi
echo "setup-venv: building $venv (torch first, then requirements/lock.txt)"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade "pip==25.3"
"$venv/bin/python" -m pip install --quiet -r requirements/torch.txt
"$venv/bin/python" -m pip install --quiet -r requirements/lock.txt
"$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e .
"$venv/bin/python" -m pip check
echo "$want" > "$stamp"
echo "setup-venv: done ($("$venv/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
