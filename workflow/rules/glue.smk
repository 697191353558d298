# The GLUE family (kdsweep.glue), in the order the data flows: synthetic TSVs (demo) ->
# prepare (glue/data.py: MNLI/QQP to JSONL with a manifest) -> tokenizer (models built from a
# config) -> teacher fine-tuning and its logits cache (glue/teacher.py, in the content-addressed
# store of kdsweep/core/cache.py) -> one distillation per sweep point (glue/distill.py, launched
# by kdsweep/cluster/launch.py) -> evaluation (glue/evaluate.py: accuracy, macro-F1 and per-class
# F1 on every dev split). Checkpoints are not outputs: a failed or preempted job resumes from them.


rule synthesize_glue:
    output:
        directory(P.raw_glue_dir("{task}")),
    log:
        P.log("synthesize_glue", "{task}"),
    benchmark:
        P.benchmark("synthesize_glue", "{task}")
    conda:
        "../../envs/kdsweep.yaml"
    params:
        spec=as_json(GLUE["synthetic"]),
    shell:
        "python -m kdsweep synthesize-glue --task {wildcards.task:q} --out {output:q} "
        "--spec {params.spec:q} > {log:q} 2>&1"


rule prepare_glue:
    input:
        glue_tsv_input,
        assets_input(),
    output:
        directory(P.data_dir("{task}")),
    log:
        P.log("prepare_glue", "{task}"),
    benchmark:
        P.benchmark("prepare_glue", "{task}")
    conda:
        "../../envs/kdsweep.yaml"
    params:
        tsv=glue_tsv_arg,
        spec=as_json(
            {
                k: GLUE[k]
                for k in (
                    "source",
                    "hub_dataset",
                    "max_train_examples",
                    "subset_seed",
                )
            }
        ),
    shell:
        "python -m kdsweep prepare-glue --task {wildcards.task:q} {params.tsv:q} --out {output:q} "
        "--spec {params.spec:q} > {log:q} 2>&1"


rule train_tokenizer:
    input:
        P.data_dir("{task}"),
    output:
        directory(P.tokenizer_dir("{task}")),
    log:
        P.log("train_tokenizer", "{task}"),
    benchmark:
        P.benchmark("train_tokenizer", "{task}")
    conda:
        "../../envs/kdsweep.yaml"
    params:
        spec=as_json(GLUE["tokenizer_training"]),
    shell:
        "python -m kdsweep train-tokenizer --train {input:q}/train.jsonl --out {output:q} "
        "--spec {params.spec:q} > {log:q} 2>&1"


rule finetune_teacher:
    input:
        data=P.data_dir("{task}"),
        tokenizer=lambda w: tokenizer_inputs(GLUE, w.task),
    output:
        model=directory(P.teacher_model("{task}")),
        log=P.teacher_log("{task}"),
    log:
        P.log("finetune_teacher", "{task}"),
    benchmark:
        P.benchmark("finetune_teacher", "{task}")
    conda:
        "../../envs/kdsweep.yaml"
    threads: 2
    params:
        tokenizer=lambda w: plan.teacher_tokenizer(GLUE, w.task, P),
        checkpoints=lambda w: P.teacher_checkpoints(w.task),
        tracking=lambda w, output: tracking_args(P.tracking_dir(w.task, "teacher")),
        spec=lambda w: as_json(
            {
                "model": GLUE["teacher"]["model"],
                "finetune": GLUE["teacher"]["finetune"],
                "max_length": GLUE["max_length"],
                "eval_batch_size": GLUE["evaluate"]["batch_size"],
            }
        ),
    shell:
        "KDSWEEP_THREADS={threads} python -m kdsweep finetune-teacher --task {wildcards.task:q} "
        "--tokenizer {params.tokenizer:q} --data-dir {input.data:q} --model-out {output.model:q} "
        "--log-out {output.log:q} --checkpoints {params.checkpoints:q} {params.tracking:q} "
        "--spec {params.spec:q} > {log:q} 2>&1"


rule cache_teacher:
    input:
        data=P.data_dir("{task}"),
        teacher=lambda w: teacher_model_input(GLUE, w.task),
        tokenizer=lambda w: tokenizer_inputs(GLUE, w.task),
    output:
        P.cache_pointer("{task}"),
    log:
        P.log("cache_teacher", "{task}"),
    benchmark:
        P.benchmark("cache_teacher", "{task}")
    conda:
        "../../envs/kdsweep.yaml"
    threads: 2
    params:
        teacher=lambda w: plan.teacher_model(GLUE, w.task, P),
        tokenizer=lambda w: plan.teacher_tokenizer(GLUE, w.task, P),
        store=P.cache_store(),
        spec=as_json(
            {
                "max_length": GLUE["max_length"],
                "batch_size": GLUE["teacher"]["cache"]["batch_size"],
            }
        ),
    shell:
        "KDSWEEP_THREADS={threads} python -m kdsweep cache-teacher --task {wildcards.task:q} "
        "--teacher {params.teacher:q} --tokenizer {params.tokenizer:q} --data-dir {input.data:q} "
        "--store {params.store:q} --out {output:q} --spec {params.spec:q} > {log:q} 2>&1"


rule distill:
    input:
        data=P.data_dir("{task}"),
        cache=P.cache_pointer("{task}"),
        teacher=lambda w: teacher_model_input(GLUE, w.task),
        tokenizer=lambda w: tokenizer_inputs(GLUE, w.task),
        deepspeed=deepspeed_config_input(GLUE["distill"]["distributed"]),
    output:
        model=directory(P.distill_model("{task}", "{point}")),
        log=P.distill_log("{task}", "{point}"),
    log:
        P.log("distill", "{task}", "{point}"),
    benchmark:
        P.benchmark("distill", "{task}", "{point}")
    conda:
        "../../envs/kdsweep.yaml"
    threads: 2
    params:
        launch=launch(GLUE["distill"]["distributed"]),
        teacher=lambda w: plan.teacher_model(GLUE, w.task, P),
        teacher_tokenizer=lambda w: plan.teacher_tokenizer(GLUE, w.task, P),
        student_tokenizer=lambda w: plan.student_tokenizer(GLUE, w.task, P),
        checkpoints=lambda w: P.distill_checkpoints(w.task, w.point),
        tracking=lambda w, output: tracking_args(P.tracking_dir(w.task, w.point)),
        deepspeed=lambda w, input: deepspeed_arg(input),
        spec=lambda w: as_json(
            {
                "point": POINTS[w.point],
                "student": GLUE["student"],
                "distill": distill_settings(GLUE["distill"]),
                "max_length": GLUE["max_length"],
                "eval_batch_size": GLUE["evaluate"]["batch_size"],
            }
        ),
    shell:
        "KDSWEEP_THREADS={threads} {params.launch:q} "
        "distill --task {wildcards.task:q} {params.deepspeed:q} "
        "--teacher {params.teacher:q} --teacher-tokenizer {params.teacher_tokenizer:q} "
        "--student-tokenizer {params.student_tokenizer:q} --data-dir {input.data:q} --cache {input.cache:q} "
        "--model-out {output.model:q} --log-out {output.log:q} --checkpoints {params.checkpoints:q} "
        "{params.tracking:q} --spec {params.spec:q} > {log:q} 2>&1"


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
        "../../envs/kdsweep.yaml"
    params:
        spec=lambda w: as_json(
            {
                "max_length": GLUE["max_length"],
                "batch_size": GLUE["evaluate"]["batch_size"],
                "params": POINTS[w.point],
            }
        ),
    shell:
        "KDSWEEP_THREADS={threads} python -m kdsweep evaluate --task {wildcards.task:q} --model {input.model:q} "
        "--data-dir {input.data:q} --out {output:q} --name {wildcards.point:q} --spec {params.spec:q} > {log:q} 2>&1"


rule evaluate_teacher:
    input:
        data=P.data_dir("{task}"),
        model=lambda w: teacher_model_input(GLUE, w.task),
    output:
        P.eval_json("{task}", "teacher"),
    log:
        P.log("evaluate_teacher", "{task}"),
    benchmark:
        P.benchmark("evaluate_teacher", "{task}")
    conda:
        "../../envs/kdsweep.yaml"
    params:
        model=lambda w: plan.teacher_model(GLUE, w.task, P),
        spec=as_json(
            {
                "max_length": GLUE["max_length"],
                "batch_size": GLUE["evaluate"]["batch_size"],
            }
        ),
    shell:
        "KDSWEEP_THREADS={threads} python -m kdsweep evaluate --task {wildcards.task:q} --model {params.model:q} "
        "--data-dir {input.data:q} --out {output:q} --name teacher --spec {params.spec:q} > {log:q} 2>&1"
