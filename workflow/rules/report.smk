# Stage report: the study's tables, loss curves and report.md (kdflow/report.py).


rule report:
    input:
        evals=expand(P.eval_json("{task}", "{point}"), task=TASKS, point=POINTS),
        teacher=expand(P.eval_json("{task}", "teacher"), task=TASKS),
        logs=expand(P.distill_log("{task}", "{point}"), task=TASKS, point=POINTS),
        data=expand(P.data_dir("{task}"), task=TASKS),
    output:
        md=P.report_md(),
        tables=expand(
            P.report_table("{task}", "{axis}", "{ext}"),
            task=TASKS,
            axis=swept_axes(config),
            ext=("csv", "md", "tex"),
        ),
        plots=expand(P.report_plot("{task}"), task=TASKS),
    log:
        P.log("report"),
    benchmark:
        P.benchmark("report")
    conda:
        "../../envs/kdflow.yaml"
    params:
        root=lambda w, output: os.path.dirname(output.md),
        spec=as_json(
            {
                "tasks": TASKS,
                "points": POINTS,
                "swept": swept_axes(config),
                "title": f"kdflow report: {config['run_name']}",
            }
        ),
    shell:
        "python -m kdflow report --root {params.root} --spec {params.spec:q} > {log} 2>&1"
