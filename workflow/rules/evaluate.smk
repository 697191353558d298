# Stage evaluate: accuracy, macro-F1 and per-class F1 on every dev split (kdflow/evaluate.py).


rule evaluate_student:
    input:
        data=P.data_dir("{task}"),
        model=P.distill_model("{task}", "{point}"),
    output:
        P.eval_json("{task}", "{point}"),
    log:
        P.log("evaluate_student", "{task}", "{point}"),
    benchmark:
        P.benchmark("evaluate_student", "{task}", "{point}")
    conda:
        "../../envs/kdflow.yaml"
    params:
        spec=lambda w: as_json(
            {
                "max_length": config["glue"]["max_length"],
                "batch_size": config["evaluate"]["batch_size"],
                "params": POINTS[w.point],
            }
        ),
    shell:
        "KDFLOW_THREADS={threads} python -m kdflow evaluate --task {wildcards.task} --model {input.model} "
        "--data-dir {input.data} --out {output} --name {wildcards.point} --spec {params.spec:q} > {log} 2>&1"


rule evaluate_teacher:
    input:
        data=P.data_dir("{task}"),
        model=teacher_model_input,
    output:
        P.eval_json("{task}", "teacher"),
    log:
        P.log("evaluate_teacher", "{task}"),
    benchmark:
        P.benchmark("evaluate_teacher", "{task}")
    conda:
        "../../envs/kdflow.yaml"
    params:
        model=lambda w: plan.teacher_model(config, w.task, P),
        spec=as_json(
            {
                "max_length": config["glue"]["max_length"],
                "batch_size": config["evaluate"]["batch_size"],
            }
        ),
    shell:
        "KDFLOW_THREADS={threads} python -m kdflow evaluate --task {wildcards.task} --model {params.model} "
        "--data-dir {input.data} --out {output} --name teacher --spec {params.spec:q} > {log} 2>&1"
