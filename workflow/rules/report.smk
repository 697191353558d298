# Stage report: the study's tables, loss curves, sample translations and report.md
# (kdflow/report.py), from the runs' output files only.


rule report:
    input:
        report_inputs(),
    output:
        md=P.report_md(),
        files=report_files(),
    log:
        P.log("report"),
    benchmark:
        P.benchmark("report")
    conda:
        "../../envs/kdflow.yaml"
    params:
        root=lambda w, output: os.path.dirname(output.md),
        spec=as_json(report_spec()),
    shell:
        "python -m kdflow report --root {params.root} --spec {params.spec:q} > {log} 2>&1"
