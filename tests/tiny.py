"""Tiny models and small workflow configs shared by the tests (offline, seconds on a CPU)."""


def tiny_bert(layers: int = 2, **config) -> dict:
    """A BERT built from a config: hidden 32, 2 heads."""
    return {
        "family": "bert",
        "config": {
            "hidden_size": 32,
            "num_hidden_layers": layers,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 64,
            **config,
        },
    }


# A folder name that breaks any shell line holding it unquoted: spaces, both quotes, $(...) and
# backquotes. The workflow tests put their results (and the inputs they name) under it: the run
# must work, and nothing may execute (no OWNED file appears).
HOSTILE_NAME = "a dir 'q' \"dq\" $(touch OWNED) `touch OWNED2`"


def injected(*roots) -> list:
    """Files a command injected through a path would have made (OWNED*), under each root."""
    from pathlib import Path

    return [p for root in roots for p in Path(root).rglob("OWNED*")]


def dot_test_config(name: str) -> dict:
    """.test/<name>.yaml, the small runs a shell user can start too (snakemake --configfile ...)."""
    from pathlib import Path

    import yaml

    return yaml.safe_load((Path(__file__).resolve().parents[1] / ".test" / f"{name}.yaml").read_text())


def small_glue_config(run_name: str, tasks: list[str], train_size: int, distill_training: dict, **distill) -> dict:
    """.test/glue.yaml (the demo's workflow at test size: synthetic data, a 2-layer teacher, a
    1-layer student), with this test's run name, tasks, training size and distillation settings."""
    config = dot_test_config("glue")
    glue = config["glue"]
    config["run_name"], glue["tasks"] = run_name, tasks
    glue["synthetic"]["train_size"] = train_size
    glue["distill"] |= {"training": distill_training, **distill}
    return config


def tiny_llama(layers: int = 2, **config) -> dict:
    """A Llama built from a config: hidden 32, 2 heads (1 KV head)."""
    return {
        "family": "llama",
        "config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": layers,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 128,
            "tie_word_embeddings": True,
            **config,
        },
    }


DEMO_TEMPLATE = "<|begin_of_text|>English: {source}\nFrench: {target}{marker}<|eot_id|>"
DEMO_PROMPT = {"template": DEMO_TEMPLATE, "end_marker": "<|end_of_translation|>", "marker_token": None}


def lm_training(**over) -> dict:
    """A `training` block with the schema's defaults filled in, `over` set."""
    from kdsweep.core.config import training_block

    return training_block(**over)


def wait_for_a_checkpoint(job, checkpoints, log=None, timeout: float = 300) -> None:
    """Wait until the training process `job` (a Popen) has written a complete checkpoint in the
    folder `checkpoints`; fail (with the tail of the file `log`) if it exits or times out first."""
    import time
    from pathlib import Path

    from kdsweep.core.trainer import COMPLETE_MARKER

    deadline = time.monotonic() + timeout
    while not list(Path(checkpoints).glob(f"checkpoint-*/{COMPLETE_MARKER}")):
        alive = job.poll() is None and time.monotonic() < deadline
        assert alive, Path(log).read_text()[-4000:] if log else f"no checkpoint in {checkpoints}"
        time.sleep(0.05)


def run_and_signal_distill(cmd, cwd, env, checkpoints, job_tag: str, timeout: float = 900):
    """Run a Snakemake command (Slurm profile); once the distill job whose comment contains
    `job_tag` runs and has a complete checkpoint in `checkpoints`, send it Slurm's warning signal
    (`scancel --signal=USR1`: what --signal=USR1@600 sends, to every process of the job's steps,
    on every node). Returns (the signalled job id or None, the run's output, its exit code)."""
    import subprocess
    import time
    from pathlib import Path

    from kdsweep.core.trainer import COMPLETE_MARKER

    run = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    signalled = None
    deadline = time.time() + timeout
    while time.time() < deadline and run.poll() is None:
        if signalled is None and list(Path(checkpoints).glob(f"checkpoint-*/{COMPLETE_MARKER}")):
            squeue = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i|%k"], capture_output=True, text=True).stdout
            running = [line.split("|")[0] for line in squeue.splitlines() if job_tag in line]
            if running:
                signalled = running[0]
                subprocess.run(["scancel", "--signal=USR1", signalled], check=True)
        time.sleep(0.2)
    output = run.communicate(timeout=600)[0]
    return signalled, output, run.returncode


def crash_after(step: int):
    """A Trainer callback that raises KeyboardInterrupt at the end of optimizer step `step`: a job
    killed there (its last checkpoint is what a rerun resumes from)."""
    from transformers import TrainerCallback

    class CrashAfter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise KeyboardInterrupt("simulated preemption")

    return CrashAfter()
