"""Building a Hugging Face cache in the hub's own layout, for the offline asset tests."""

from pathlib import Path

# nyu-mll/glue's README `configs:` for MNLI (one parquet folder per config), as the hub has it.
GLUE_MNLI_README = """---
configs:
- config_name: mnli
  data_files:
  - split: train
    path: mnli/train-*
  - split: validation_matched
    path: mnli/validation_matched-*
  - split: validation_mismatched
    path: mnli/validation_mismatched-*
dataset_info:
- config_name: mnli
  features:
  - name: premise
    dtype: string
  - name: hypothesis
    dtype: string
  - name: label
    dtype:
      class_label:
        names:
          '0': entailment
          '1': neutral
          '2': contradiction
  - name: idx
    dtype: int32
---
# GLUE (test copy)
"""


def snapshot(cache: Path, repo_id: str, commit: str, repo_type: str = "model") -> Path:
    """An empty snapshot folder of `repo_id` at `commit` in hub cache `cache`, refs/main pointing at it."""
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    folder = repo / "snapshots" / commit
    folder.mkdir(parents=True)
    return folder
