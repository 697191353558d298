"""COMET's tests run under COMET's own interpreter (.venv-comet: unbabel-comet, transformers 4,
numpy 1; requirements/comet.txt), not under the main pytest, which ignores this folder
(tests/conftest.py). From the repository root (`make test` runs it after the main suite):

    PYTHONPATH=src:tests .venv-comet/bin/python -m pytest --confcutdir tests/comet -p no:cacheprovider tests/comet

--confcutdir keeps tests/conftest.py out: it imports the main environment's packages. Everything
is offline: the COMET model is tests/tiny_comet.py's, built here."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
for folder in (TESTS, REPO / "src"):  # tiny_comet and kdsweep (not installed in COMET's environment)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
