"""The report reads only the runs' output files: eval JSONs, training logs, data manifests."""

from pathlib import Path

import pandas as pd
import pytest

from kdsweep.core.io import write_json, write_jsonl
from kdsweep.core.paths import RunPaths
from kdsweep.families import write_report


def fake_run_outputs(paths, task, splits, points):
    write_json(
        paths.data_manifest(task),
        {
            "source": "synthetic",
            "splits": {"train": {"rows_read": 10, "rows_written": 9, "dropped_by_reason": {"short row": 1}}},
        },
    )
    write_json(paths.eval_json(task, "teacher"), {"splits": {s: {"accuracy": 0.9, "macro_f1": 0.88} for s in splits}})
    for i, (pid, params) in enumerate(points.items()):
        acc = 0.5 + 0.1 * i
        write_json(
            paths.eval_json(task, pid),
            {"params": params, "splits": {s: {"accuracy": acc, "macro_f1": acc - 0.05} for s in splits}},
        )
        write_jsonl(
            paths.distill_log(task, pid),
            [{"step": 1, "loss": 1.0 - i / 10}, {"step": 2, "loss": 0.5}, {"step": 2, "eval_loss": 0.7}],
        )


def written_files(paths: RunPaths) -> set[str]:
    return {str(p) for p in Path(paths.report_dir()).rglob("*") if p.is_file()} | {paths.report_md()}


def declared_files(paths: RunPaths, spec: dict) -> set[str]:
    """The report rule's outputs: kdsweep.families.report_outputs (independently: the files
    write_report actually left, above)."""
    from kdsweep.families import report_outputs

    return {f for files in report_outputs(paths, spec).values() for f in files}


def test_alpha_sweep_gets_its_own_table_and_numbers_are_the_runs(tmp_path):
    paths = RunPaths(str(tmp_path / "run"))
    points = {
        "lr0.001_a0.5_T2": {"learning_rate": 1e-3, "alpha": 0.5, "temperature": 2.0},
        "lr0.001_a1_T2": {"learning_rate": 1e-3, "alpha": 1.0, "temperature": 2.0},
        "lr1e-05_a0.5_T2": {"learning_rate": 1e-5, "alpha": 0.5, "temperature": 2.0},
        "lr1e-05_a1_T2": {"learning_rate": 1e-5, "alpha": 1.0, "temperature": 2.0},
    }
    fake_run_outputs(paths, "mnli", ["dev_matched", "dev_mismatched"], points)
    fake_run_outputs(paths, "qqp", ["dev"], points)
    spec = {
        "title": "test report",
        "glue": {"tasks": ["mnli", "qqp"], "points": points, "swept": ["learning_rate", "alpha"]},
    }
    md = write_report(paths, spec)
    assert written_files(paths) == declared_files(paths, spec)  # what the report rule declares

    by_alpha = pd.read_csv(paths.report_table("qqp", "alpha", "csv"))
    assert list(by_alpha.columns) == ["Alpha", "Learning rate", "Accuracy (%)", "Macro-F1"]
    row = by_alpha[(by_alpha["Alpha"] == 1.0) & (by_alpha["Learning rate"] == 1e-5)].iloc[0]
    assert row["Accuracy (%)"] == pytest.approx(80.0) and row["Macro-F1"] == pytest.approx(75.0)  # point 3: 0.5 + 0.3

    by_lr = pd.read_csv(paths.report_table("mnli", "learning_rate", "csv"))
    assert list(by_lr.columns) == [
        "Learning rate",
        "Alpha",
        "Accuracy m (%)",
        "Macro-F1 m",
        "Accuracy mm (%)",
        "Macro-F1 mm",
    ]
    assert by_lr["Learning rate"].tolist() == [1e-3, 1e-5, 1e-3, 1e-5]  # grouped by alpha, largest LR first
    tex = open(paths.report_table("mnli", "learning_rate", "tex")).read()
    assert "\\begin{table}" in tex and "0.001" in tex and "60" in tex
    text = md.read_text()
    assert (
        "## MNLI" in text
        and "MNLI by alpha" in text
        and "train: 9 rows written of 10 read (dropped: short row: 1)" in text
    )
    assert "Teacher: Accuracy m (%) 90, Macro-F1 m 88" in text
    assert "![qqp loss curves](report/qqp_loss.png)" in text


def test_loss_curves_plot_each_runs_logged_losses(tmp_path):
    from kdsweep.core.report import loss_curve_figure

    paths = RunPaths(str(tmp_path / "run"))
    points = {"lr0.001_a0.5_T2": {}, "lr1e-05_a0.5_T2": {}}
    fake_run_outputs(paths, "qqp", ["dev"], points)
    fig = loss_curve_figure(paths, "qqp", points)
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in fig.axes[0].get_lines()}
    assert lines == {
        "lr0.001_a0.5_T2 train": ([1, 2], [1.0, 0.5]),
        "lr0.001_a0.5_T2 eval (CE)": ([2], [0.7]),
        "lr1e-05_a0.5_T2 train": ([1, 2], [0.9, 0.5]),
        "lr1e-05_a0.5_T2 eval (CE)": ([2], [0.7]),
    }


def test_experiment_tables_study_comparison_and_runtime(tmp_path):
    paths = RunPaths(str(tmp_path / "run"))
    sweep = {
        "lr2e-05_a0.5_T2": {"learning_rate": 2e-5, "alpha": 0.5, "temperature": 2.0},
        "lr2e-07_a0.5_T2": {"learning_rate": 2e-7, "alpha": 0.5, "temperature": 2.0},
    }
    extra = {
        "lr2e-05_a1_T2": {},
        "lr2e-05_a1_T2_cos1": {},
        "lr2e-05_a0.5_T2_cos1": {},
        "lr2e-05_a0.5_T2_cos1_rand": {},
    }
    fake_run_outputs(paths, "qqp", ["dev"], {**sweep, **extra})  # accuracy 0.5, 0.6, ... in this order
    fake_run_outputs(paths, "mnli", ["dev_matched"], {**sweep, **extra})  # a task the reference lacks
    ablation = {
        "KD only": "lr2e-05_a1_T2",
        "KD + hidden cosine": "lr2e-05_a1_T2_cos1",
        "KD + hidden cosine + CE": "lr2e-05_a0.5_T2_cos1",
        "KD + hidden cosine + CE, random init": "lr2e-05_a0.5_T2_cos1_rand",
    }
    base = {"learning_rate": 2e-5, "alpha": 0.5, "temperature": 2.0}
    reference = tmp_path / "reference.yaml"
    reference.write_text(
        "glue:\n  qqp:\n    split: dev\n    rows:\n"
        "      - {learning_rate: 2.0e-5, alpha: 0.5, accuracy: 90.0, macro_f1: 89.46}\n"
        "      - {learning_rate: 2.0e-9, alpha: 0.5, accuracy: 63.18, macro_f1: 38.72}\n"
    )
    # Two jobs' benchmark files: a local one (plain format) and a Slurm one (--benchmark-extended).
    bench = Path(paths.benchmark("distill", "qqp", "lr2e-05_a0.5_T2"))
    bench.parent.mkdir(parents=True)
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time"
    bench.write_text(header + "\n3600.0\t1:00:00\t2048.5\t1\t1\t1\t0\t0\t90\t3000.0\n")
    resources = {"mem_mb": 128000, "nodes": 2, "slurm_extra": "--gpus-per-node=v100-sxm2:4 --signal=USR1@600"}
    extended = header + "\tjobid\trule_name\twildcards\tparams\tthreads\tcpu_usage\tresources\tinput_size_mb\n"
    extended += f"1800.0\t0:30:00\t1000\t1\t1\t1\t0\t0\t90\t1500.0\t7\tdistill\t{{}}\t{{}}\t16\t90\t{resources}\t{{}}\n"
    Path(paths.benchmark("distill", "qqp", "lr2e-07_a0.5_T2")).write_text(extended)
    Path(paths.benchmark("report")).write_text(header + "\n5.0\t0:00:05\t100\t1\t1\t1\t0\t0\t90\t4.0\n")

    spec = {
        "title": "t",
        "reference": str(reference),
        "glue": {
            "tasks": ["qqp", "mnli"],
            "points": sweep,
            "swept": ["learning_rate"],
            "experiments": {"ablation": {"base": base, "rows": ablation}},
        },
    }
    md = write_report(paths, spec).read_text()
    assert written_files(paths) == declared_files(paths, spec)

    table = pd.read_csv(paths.report_file("qqp_ablation", "csv"))
    assert table["Loss"].tolist() == list(ablation)
    assert table["Accuracy (%)"].tolist() == [70.0, 80.0, 90.0, 100.0]  # the runs' own numbers
    assert table["Accuracy (%), diff to full"].tolist() == [-20.0, -10.0, 0.0, 10.0]
    assert "### QQP: loss ablation (learning rate 2e-05, alpha 0.5, temperature 2)" in md

    study = pd.read_csv(paths.report_file("qqp_vs_study", "csv"))
    first = study.iloc[0]
    ours = [float(first[c]) for c in ("Accuracy kdsweep (%)", "Accuracy study (%)", "Accuracy diff")]
    assert ours == [50.0, 90.0, -40.0]
    assert [float(first["Macro-F1 kdsweep"]), float(first["Macro-F1 diff"])] == [45.0, -44.46]
    assert study.iloc[1]["Accuracy kdsweep (%)"] == "not run"  # the study's 2e-9 was not run here

    runtime = pd.read_csv(paths.report_file("runtime", "csv")).set_index("Rule")
    assert "report" not in runtime.index  # the report's own job: left out, so a rerun has the same table
    distill = runtime.loc["distill"]
    assert (distill["Jobs"], distill["Wall time (s)"], distill["GPUs per job"]) == (2, 5400.0, 8)
    assert distill["GPU-hours"] == pytest.approx(4.0)  # 0.5 h x 4 GPUs x 2 nodes; the local job held none
    assert distill["Peak RSS (MB)"] == pytest.approx(2048.0, abs=1)

    html = Path(paths.report_file("qqp_vs_study", "html")).read_text()
    assert html.startswith("<!DOCTYPE html>") and "<td>90</td>" in html and "Accuracy diff" in html
    assert "## Runtime and GPU-hours per rule" in md and "[.html](report/runtime.html)" in md
    # LaTeX: special characters escaped in headers and captions (a bare % would comment out the rest).
    tex = Path(paths.report_file("qqp_ablation", "tex")).read_text()
    assert "Accuracy (\\%), diff to full" in tex and "(%)" not in tex
    tex = Path(paths.report_file("runtime", "tex")).read_text()
    assert "GPU-hours" in tex and "Peak RSS (MB)" in tex


def test_translation_study_comparison(tmp_path):
    from kdsweep.translation.report import translation_vs_study

    paths = RunPaths(str(tmp_path / "run"))
    write_json(paths.eval_json("europarl_en_fr", "base"), {"bleu": 17.891, "scored": 5})
    write_json(paths.eval_json("europarl_en_fr", "lr0.001_a0.5_T1"), {"bleu": 27.0, "scored": 5})
    write_json(paths.eval_comet("europarl_en_fr", "base"), {"comet": 0.7512, "comet_model": "m", "scored": 5})
    write_json(paths.eval_comet("europarl_en_fr", "lr0.001_a0.5_T1"), {"comet": 0.8, "comet_model": "m", "scored": 5})
    points = {"lr0.001_a0.5_T1": {"learning_rate": 1e-3, "alpha": 0.5, "temperature": 1.0}}
    ref = {
        "rows": [
            {"model": "base", "bleu": 18.89, "comet": 0.73},
            {"learning_rate": 1e-3, "bleu": 25.76, "comet": 0.80},
            {"learning_rate": 1e-4, "bleu": 26.57, "comet": 0.82},
        ]
    }
    table = translation_vs_study(paths, "europarl_en_fr", points, ref, {"enabled": True, "model": "m"})
    assert table["Model"].tolist() == [
        "Base model",
        "Distilled (learning rate 0.001)",
        "Distilled (learning rate 0.0001)",
    ]
    assert table.iloc[0][["SacreBLEU kdsweep", "SacreBLEU diff", "COMET kdsweep", "COMET diff"]].tolist() == [
        17.89,
        -1.0,
        0.7512,
        0.0212,
    ]
    assert table.iloc[1][["SacreBLEU diff", "COMET kdsweep", "COMET diff"]].tolist() == [1.24, 0.8, 0.0]
    assert table.iloc[2][["SacreBLEU kdsweep", "COMET kdsweep"]].tolist() == ["not run", "not run"]
    # COMET off: its files are not read (a run with COMET off has none), the table says so.
    for name in ("base", "lr0.001_a0.5_T1"):
        Path(paths.eval_comet("europarl_en_fr", name)).unlink()
    table = translation_vs_study(paths, "europarl_en_fr", points, ref, {"enabled": False})
    assert table["COMET kdsweep"].tolist() == ["not computed", "not computed", "not run"]
    assert table.iloc[1][["SacreBLEU diff", "COMET diff"]].tolist() == [1.24, ""]


def test_the_comet_result_is_merged_into_each_models_row_or_said_not_computed(tmp_path):
    """score_comet's file gives the row its COMET (the evaluation JSON has none); with COMET off
    the row says "not computed" and why (the config's reason)."""
    from kdsweep.translation.report import model_result, translation_row

    paths = RunPaths(str(tmp_path / "run"))
    result = {"bleu": 20.0, "chrf": 50.0, "length_ratio": 1.0, "stop_rates": {"marker": 1.0, "eos": 0.0}, "scored": 2}
    result["stop_rates"]["max_new_tokens"] = 0.0
    write_json(paths.eval_json("europarl_en_fr", "base"), result)
    comet = {"comet": 0.61234, "comet_model": "Unbabel/wmt22-comet-da", "comet_checkpoint": "/c", "scored": 2}
    write_json(paths.eval_comet("europarl_en_fr", "base"), comet | {"segment_scores": []})
    on = model_result(paths, "europarl_en_fr", "base", {"enabled": True, "model": "Unbabel/wmt22-comet-da"})
    assert on == result | {"comet": 0.61234, "comet_model": "Unbabel/wmt22-comet-da"}
    assert translation_row(on)["COMET"] == 0.6123
    off = model_result(paths, "europarl_en_fr", "base", {"enabled": False, "reason": "no checkpoint offline"})
    assert off == result | {
        "comet": None,
        "comet_note": "not computed: evaluate.comet.enabled is false in the config (no checkpoint offline)",
    }
    assert translation_row(off)["COMET"] == "not computed"
    assert "(" not in model_result(paths, "europarl_en_fr", "base", {"enabled": False})["comet_note"]
    # A COMET file of other translations (another count) or of another COMET model is refused.
    with pytest.raises(ValueError, match=r"base\.comet\.json: COMET of 2 translations.*stale"):
        model_result(paths, "europarl_en_fr", "base", {"enabled": True, "model": "Unbabel/other-comet"})
    write_json(paths.eval_json("europarl_en_fr", "base"), result | {"scored": 3})
    with pytest.raises(ValueError, match="scored 3"):
        model_result(paths, "europarl_en_fr", "base", {"enabled": True, "model": "Unbabel/wmt22-comet-da"})


def test_translation_rows_count_stop_reasons_from_the_outputs(tmp_path):
    """The runaway rate is the share that ran to max_new_tokens; a model that stops at <|eot_id|>
    (the base model, an Instruct teacher) is not a runaway. The rates in the table are the counts
    of the outputs' stop reasons, written by evaluate_translation."""
    from kdsweep.translation.evaluate import stop_rates
    from kdsweep.translation.report import translation_row

    outputs = [{"stop": s} for s in ["eos"] * 6 + ["marker"] * 3 + ["max_new_tokens"]]
    result = {"bleu": 20.0, "chrf": 50.0, "comet": None, "length_ratio": 1.0, "stop_rates": stop_rates(outputs)}
    row = translation_row(result)
    assert (row["Ended with marker (%)"], row["Ended with eos (%)"], row["Runaway (%)"]) == (30.0, 60.0, 10.0)
    eot_only = {**result, "stop_rates": stop_rates([{"stop": "eos"}] * 4)}
    assert translation_row(eot_only)["Runaway (%)"] == 0.0


def test_seeds_give_each_point_its_mean_sd_and_n_and_the_study_comparison_the_mean(tmp_path):
    """Two seeds per point: the learning-rate table and the comparison with the study hold the mean
    of the two runs' metrics (computed here from their evaluation JSONs), the table the sample
    standard deviation and n = 2; the all-runs table keeps every run."""
    import statistics

    paths = RunPaths(str(tmp_path / "run"))
    points = {
        f"lr{lr:g}_a0.5_T2_s{seed}": {"learning_rate": lr, "alpha": 0.5, "temperature": 2.0, "seed": seed}
        for lr in (1e-3, 1e-5)
        for seed in (1, 2)
    }
    fake_run_outputs(paths, "qqp", ["dev"], points)  # accuracy 0.5, 0.6, 0.7, 0.8 in this order
    reference = tmp_path / "reference.yaml"
    reference.write_text(
        "glue:\n  qqp:\n    split: dev\n    rows:\n      - {learning_rate: 1.0e-3, accuracy: 90.0, macro_f1: 89.0}\n"
    )
    spec = {
        "title": "seeds",
        "reference": str(reference),
        "glue": {"tasks": ["qqp"], "points": points, "swept": ["learning_rate"]},
    }
    write_report(paths, spec)
    by_lr = pd.read_csv(paths.report_table("qqp", "learning_rate", "csv")).set_index("Learning rate")
    for lr, ids in (
        (1e-3, ["lr0.001_a0.5_T2_s1", "lr0.001_a0.5_T2_s2"]),
        (1e-5, ["lr1e-05_a0.5_T2_s1", "lr1e-05_a0.5_T2_s2"]),
    ):
        acc = [100 * pd.read_json(paths.eval_json("qqp", i), typ="series")["splits"]["dev"]["accuracy"] for i in ids]
        row = by_lr.loc[lr]
        assert row["Seeds"] == 2
        assert row["Accuracy (%)"] == pytest.approx(round(statistics.fmean(acc), 2))
        assert row["Accuracy (%) sd"] == pytest.approx(round(statistics.stdev(acc), 2))
    assert by_lr.loc[1e-3, "Accuracy (%)"] == pytest.approx(55.0) and by_lr.loc[1e-3, "Accuracy (%) sd"] == 7.07
    study = pd.read_csv(paths.report_file("qqp_vs_study", "csv"))
    assert study.iloc[0][["Seeds", "Accuracy kdsweep (%)", "Accuracy diff"]].tolist() == [2, 55.0, -35.0]
    assert len(pd.read_csv(paths.report_file("qqp_all_runs", "csv"))) == 4
    assert written_files(paths) == declared_files(paths, spec)


def test_translation_rows_average_seeds_and_test_each_run_against_base_and_teacher(tmp_path):
    """A point with two seeds: its row is the mean and sd of the runs' BLEU (sacrebleu's corpus
    BLEU of each run's translations, here), and says how many runs beat the base student
    significantly; every run's p-values are those of sacrebleu's paired test run here."""
    import random
    import statistics

    import sacrebleu
    from sentences import corpus_references, noisy

    from kdsweep.translation.metrics import paired_test, sacrebleu_scores
    from kdsweep.translation.report import significance, translation_runs_table, translation_table

    paths, task, rng = RunPaths(str(tmp_path / "run")), "europarl_en_fr", random.Random(0)
    refs = corpus_references(80, rng)
    points = {
        f"lr0.001_a0.5_T1_s{s}": {"learning_rate": 1e-3, "alpha": 0.5, "temperature": 1.0, "seed": s} for s in (1, 2)
    }
    keep = {"base": 0.3, "teacher": 0.9, "lr0.001_a0.5_T1_s1": 0.7, "lr0.001_a0.5_T1_s2": 0.75}
    hyps = {}
    for name, k in keep.items():
        hyps[name] = noisy(refs, k, rng)
        rows = [
            {"id": i, "source": "s", "reference": r, "hypothesis": h, "stop": "marker"}
            for i, (r, h) in enumerate(zip(refs, hyps[name], strict=True))
        ]
        write_jsonl(paths.eval_translations(task, name), rows)
        stop = {"marker": 1.0, "eos": 0.0, "max_new_tokens": 0.0}
        write_json(
            paths.eval_json(task, name), sacrebleu_scores(hyps[name], refs, bootstrap=100) | {"stop_rates": stop}
        )
    names = ["base", *points, "teacher"]
    tests = significance(paths, task, names)
    table = translation_table(paths, task, points, ["learning_rate"], {"enabled": False}, tests).set_index("Model")
    bleus = [sacrebleu.corpus_bleu(hyps[p], [refs]).score for p in points]
    student = table.loc["Distilled (learning rate 0.001)"]
    assert student["Seeds"] == 2 and table.loc["Base model", "Seeds"] == 1
    assert student["SacreBLEU"] == pytest.approx(round(statistics.fmean(bleus), 2))
    assert student["SacreBLEU sd"] == pytest.approx(round(statistics.stdev(bleus), 2))
    assert student["BLEU vs base model"] == "better 2/2" and student["BLEU vs teacher"] == "worse 2/2"
    assert table.loc["Teacher", "BLEU vs teacher"] == "" and table.loc["Base model", "BLEU vs base model"] == ""
    runs = translation_runs_table(paths, task, points, ["learning_rate"], tests).set_index("Run")
    for name in names[1:]:
        own = paired_test(hyps["base"], hyps[name], refs)
        assert runs.loc[name, "BLEU p vs base model"] == f"{own['bleu']['p']:.3g}"
        assert runs.loc[name, "chrF p vs base model"] == f"{own['chrf']['p']:.3g}"
    assert runs.loc["lr0.001_a0.5_T1_s2", "Seed"] == 2


def test_an_ablation_over_two_seeds_compares_the_means_only(tmp_path):
    """Experiment rows with two runs each: every row is the mean of its runs (their evaluation
    JSONs, read here), and the ablation's difference to the full loss is taken between means,
    not between standard deviations."""
    import statistics

    from kdsweep.glue.report import experiment_table

    paths = RunPaths(str(tmp_path / "run"))
    labels = ["KD only", "KD + hidden cosine", "KD + hidden cosine + CE", "KD + hidden cosine + CE, random init"]
    ids = {label: [f"run{i}_s1", f"run{i}_s2"] for i, label in enumerate(labels)}
    fake_run_outputs(paths, "qqp", ["dev"], {pid: {} for pair in ids.values() for pid in pair})
    table = experiment_table(paths, "qqp", "ablation", [[label, pair] for label, pair in ids.items()])
    assert list(table.columns) == [
        "Loss",
        "Seeds",
        "Accuracy (%)",
        "Accuracy (%) sd",
        "Macro-F1",
        "Macro-F1 sd",
        "Accuracy (%), diff to full",
    ]
    mean = {
        label: statistics.fmean(
            100 * pd.read_json(paths.eval_json("qqp", pid), typ="series")["splits"]["dev"]["accuracy"] for pid in pair
        )
        for label, pair in ids.items()
    }
    for _, row in table.iterrows():
        assert row["Accuracy (%)"] == pytest.approx(round(mean[row["Loss"]], 2))
        diff = round(mean[row["Loss"]], 2) - round(mean["KD + hidden cosine + CE"], 2)
        assert row["Accuracy (%), diff to full"] == pytest.approx(diff)


def test_the_all_runs_table_names_the_kept_step_from_the_models_record(tmp_path):
    """A run trained with training.keep: best shows the step and the dev metric its kdsweep.json
    records; one with keep: last its last step; a run without a record says so."""
    from kdsweep.core.io import read_json
    from kdsweep.glue.report import glue_results_table

    paths = RunPaths(str(tmp_path / "run"))
    points = {
        f"lr0.001_a0.5_T2_s{s}": {"learning_rate": 1e-3, "alpha": 0.5, "temperature": 2.0, "seed": s} for s in (1, 2, 3)
    }
    fake_run_outputs(paths, "qqp", ["dev"], points)
    kept = {
        "lr0.001_a0.5_T2_s1": {"policy": "best", "step": 300, "metric": "eval_accuracy", "value": 0.8125},
        "lr0.001_a0.5_T2_s2": {"policy": "last", "step": 900, "metric": "eval_loss", "value": 0.41},
    }
    for pid, entry in kept.items():
        record = Path(paths.distill_model("qqp", pid)) / "kdsweep.json"
        write_json(record, {"kept": entry, "model": {"fingerprint": "ab" * 32}})
        result = read_json(paths.eval_json("qqp", pid))
        write_json(
            paths.eval_json("qqp", pid), result | {"model_fingerprint": "ab" * 32, "model_provenance": str(record)}
        )
    table = glue_results_table(paths, "qqp", points).set_index("run")
    assert table["Kept step"].tolist() == ["300 (best eval_accuracy 0.8125)", "900 (last)", "not recorded"]
    assert table.loc["lr0.001_a0.5_T2_s1", "Fingerprint"] == "ab" * 6
