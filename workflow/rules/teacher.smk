# Stage teacher: optional fine-tuning, then the cache of its class logits (kdflow/teacher.py).


rule finetune_teacher:
    input:
        data=P.data_dir("{task}"),
        tokenizer=tokenizer_inputs,
    output:
        model=directory(P.teacher_model("{task}")),
        log=P.teacher_log("{task}"),
    log:
        P.log("finetune_teacher", "{task}"),
    benchmark:
        P.benchmark("finetune_teacher", "{task}")
    conda:
        "../../envs/kdflow.yaml"
    threads: 2
    params:
        tokenizer=lambda w: plan.teacher_tokenizer(config, w.task, P),
        checkpoints=lambda w: P.teacher_checkpoints(w.task),
        spec=lambda w: as_json(
            {
                "model": config["teacher"]["model"],
                "finetune": config["teacher"]["finetune"],
                "max_length": config["glue"]["max_length"],
                "eval_batch_size": config["evaluate"]["batch_size"],
            }
        ),
    shell:
        "KDFLOW_THREADS={threads} python -m kdflow finetune-teacher --task {wildcards.task} "
        "--tokenizer {params.tokenizer} --data-dir {input.data} --model-out {output.model} "
        "--log-out {output.log} --checkpoints {params.checkpoints} --spec {params.spec:q} > {log} 2>&1"


rule cache_teacher:
    input:
        data=P.data_dir("{task}"),
        teacher=teacher_model_input,
        tokenizer=tokenizer_inputs,
    output:
        P.cache_pointer("{task}"),
    log:
        P.log("cache_teacher", "{task}"),
    benchmark:
        P.benchmark("cache_teacher", "{task}")
    conda:
        "../../envs/kdflow.yaml"
    threads: 2
    params:
        teacher=lambda w: plan.teacher_model(config, w.task, P),
        tokenizer=lambda w: plan.teacher_tokenizer(config, w.task, P),
        store=P.cache_store(),
        spec=as_json(
            {
                "max_length": config["glue"]["max_length"],
                "batch_size": config["teacher"]["cache"]["batch_size"],
            }
        ),
    shell:
        "KDFLOW_THREADS={threads} python -m kdflow cache-teacher --task {wildcards.task} "
        "--teacher {params.teacher} --tokenizer {params.tokenizer} --data-dir {input.data} "
        "--store {params.store} --out {output} --spec {params.spec:q} > {log} 2>&1"
