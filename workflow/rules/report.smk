# Stage report: the study's tables, the experiments' tables, kdsweep vs the study, loss curves,
# sample translations, the runtime/GPU-hours table and report.md (kdsweep/core/report.py and
# each family's report.py), from the runs' output files only. Its outputs are what
# kdsweep.families.report_outputs says the job writes. The files marked report() make up
# Snakemake's HTML report:
#   snakemake --report results/<run>/report.html --configfile ...


report: "../report/workflow.rst"


rule report:
    input:
        report_inputs(),
    output:
        md=REPORT["md"][0],
        tables=[
            report(
                f,
                category="Tables",
                caption="../report/table.rst",
                labels={"table": os.path.basename(f).removesuffix(".html")},
            )
            for f in REPORT["tables"]
            if f.endswith(".html")
        ],
        table_files=[f for f in REPORT["tables"] if not f.endswith(".html")],
        plots=[
            report(
                f,
                category="Loss curves",
                caption="../report/loss.rst",
                labels={"plot": os.path.basename(f).removesuffix("_loss.png")},
            )
            for f in REPORT["plots"]
        ],
        samples=[
            (
                report(
                    f,
                    category="Sample translations",
                    caption="../report/samples.rst",
                    labels={"samples": os.path.basename(f)},
                )
                if f.endswith(".html")
                else f
            )
            for f in REPORT["samples"]
        ],
    log:
        P.log("report"),
    benchmark:
        P.benchmark("report")
    conda:
        "../../envs/kdsweep.yaml"
    params:
        root=lambda w, output: os.path.dirname(output.md),
        spec=as_json(report_spec()),
    shell:
        "python -m kdsweep report --root {params.root:q} --spec {params.spec:q} > {log:q} 2>&1"
