# Stage teacher: optional training, then the cache of what the student needs from it.
# GLUE (kdsweep/glue/teacher.py): class logits. Translation (kdsweep/translation/teacher.py): top-k
# token logits, sharded and resumable. The cache lives in a content-addressed store; the rule's
# output is a pointer to the entry (kdsweep/core/cache.py).

if GLUE:

    rule finetune_teacher:
        input:
            data=P.data_dir("{task}"),
            tokenizer=lambda w: tokenizer_inputs(config, w.task),
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
            "KDSWEEP_THREADS={threads} python -m kdsweep finetune-teacher --task {wildcards.task:q} "
            "--tokenizer {params.tokenizer:q} --data-dir {input.data:q} --model-out {output.model:q} "
            "--log-out {output.log:q} --checkpoints {params.checkpoints:q} --spec {params.spec:q} > {log:q} 2>&1"

    rule cache_teacher:
        input:
            data=P.data_dir("{task}"),
            teacher=lambda w: teacher_model_input(config, w.task),
            tokenizer=lambda w: tokenizer_inputs(config, w.task),
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
            "KDSWEEP_THREADS={threads} python -m kdsweep cache-teacher --task {wildcards.task:q} "
            "--teacher {params.teacher:q} --tokenizer {params.tokenizer:q} --data-dir {input.data:q} "
            "--store {params.store:q} --out {output:q} --spec {params.spec:q} > {log:q} 2>&1"


if TR:

    rule train_teacher_lm:
        input:
            data=P.data_dir(TR_TASK),
            tokenizer=tokenizer_inputs(TR, TR_TASK),
        output:
            model=directory(P.teacher_model(TR_TASK)),
            log=P.teacher_log(TR_TASK),
        log:
            P.log("train_teacher_lm"),
        benchmark:
            P.benchmark("train_teacher_lm")
        conda:
            "../../envs/kdsweep.yaml"
        threads: 2
        params:
            tokenizer=lambda w: plan.teacher_tokenizer(TR, TR_TASK, P),
            checkpoints=lambda w: P.teacher_checkpoints(TR_TASK),
            spec=lambda w: as_json(  # a function: the prompt template holds braces
                {
                    "model": TR["teacher"]["model"],
                    "finetune": TR["teacher"]["finetune"],
                    "prompt": TR["prompt"],
                    "max_length": TR["max_length"],
                    "packing": TR["packing"],
                    "eval_batch_size": TR["evaluate"]["batch_size"],
                    "chunk_size": TR["distill"]["chunk_size"],
                }
            ),
        shell:
            "KDSWEEP_THREADS={threads} python -m kdsweep train-teacher-lm --tokenizer {params.tokenizer:q} "
            "--data-dir {input.data:q} --model-out {output.model:q} --log-out {output.log:q} "
            "--checkpoints {params.checkpoints:q} --spec {params.spec:q} > {log:q} 2>&1"

    rule cache_teacher_lm:
        input:
            data=P.data_dir(TR_TASK),
            teacher=teacher_model_input(TR, TR_TASK),
            tokenizer=tokenizer_inputs(TR, TR_TASK),
        output:
            P.cache_pointer(TR_TASK),
        log:
            P.log("cache_teacher_lm"),
        benchmark:
            P.benchmark("cache_teacher_lm")
        conda:
            "../../envs/kdsweep.yaml"
        threads: 2
        params:
            teacher=lambda w: plan.teacher_model(TR, TR_TASK, P),
            tokenizer=lambda w: plan.teacher_tokenizer(TR, TR_TASK, P),
            store=P.cache_store(),
            spec=lambda w: as_json(
                {
                    "prompt": TR["prompt"],
                    "cache": TR["teacher"]["cache"],
                    "max_length": TR["max_length"],
                    "packing": TR["packing"],
                }
            ),
        shell:
            "KDSWEEP_THREADS={threads} python -m kdsweep cache-teacher-lm --teacher {params.teacher:q} "
            "--tokenizer {params.tokenizer:q} --data-dir {input.data:q} --store {params.store:q} --out {output:q} "
            "--spec {params.spec:q} > {log:q} 2>&1"
