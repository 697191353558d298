# Stage distill: one student per sweep point, from the teacher cache, one process per GPU the
# job holds (kdsweep/cluster/launch.py: torchrun, srun across nodes) with the DeepSpeed ZeRO config
# named by distributed (workflow/deepspeed/). GLUE: kdsweep/glue/distill.py; translation:
# kdsweep/translation/distill.py, from the base student (init_student_lm builds it when the
# config does not name one). Checkpoints go to distill/<task>/<point>/checkpoints/, which is
# not an output, so a failed or preempted job resumes from them when rerun.

if GLUE:

    rule distill:
        input:
            data=P.data_dir("{task}"),
            cache=P.cache_pointer("{task}"),
            teacher=lambda w: teacher_model_input(config, w.task),
            tokenizer=lambda w: tokenizer_inputs(config, w.task),
            deepspeed=deepspeed_config_input(config["distill"]["distributed"]),
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
            launch=launch(config["distill"]["distributed"]),
            teacher=lambda w: plan.teacher_model(config, w.task, P),
            teacher_tokenizer=lambda w: plan.teacher_tokenizer(config, w.task, P),
            student_tokenizer=lambda w: plan.student_tokenizer(config, w.task, P),
            checkpoints=lambda w: P.distill_checkpoints(w.task, w.point),
            deepspeed=lambda w, input: deepspeed_arg(input),
            spec=lambda w: as_json(
                {
                    "point": POINTS[w.point],
                    "student": config["student"],
                    "distill": {
                        k: v
                        for k, v in config["distill"].items()
                        if k not in ("sweep", "experiments")
                    },
                    "max_length": config["glue"]["max_length"],
                    "eval_batch_size": config["evaluate"]["batch_size"],
                }
            ),
        shell:
            "KDSWEEP_THREADS={threads} {params.launch:q} "
            "distill --task {wildcards.task:q} {params.deepspeed:q} "
            "--teacher {params.teacher:q} --teacher-tokenizer {params.teacher_tokenizer:q} "
            "--student-tokenizer {params.student_tokenizer:q} --data-dir {input.data:q} --cache {input.cache:q} "
            "--model-out {output.model:q} --log-out {output.log:q} --checkpoints {params.checkpoints:q} "
            "--spec {params.spec:q} > {log:q} 2>&1"


if TR:

    rule init_student_lm:
        input:
            assets_input(),
            teacher=teacher_model_input(TR, TR_TASK),
            tokenizer=tokenizer_inputs(TR, TR_TASK),
        output:
            directory(P.student_init(TR_TASK)),
        log:
            P.log("init_student_lm"),
        benchmark:
            P.benchmark("init_student_lm")
        conda:
            "../../envs/kdsweep.yaml"
        params:
            teacher=lambda w: plan.teacher_model(TR, TR_TASK, P),
            tokenizer=lambda w: plan.student_tokenizer(TR, TR_TASK, P),
            spec=as_json(
                {
                    "student": TR["student"]["model"],
                    "seed": TR["distill"]["training"]["seed"],
                }
            ),
        shell:
            "python -m kdsweep init-student-lm --teacher {params.teacher:q} --tokenizer {params.tokenizer:q} "
            "--out {output:q} --spec {params.spec:q} > {log:q} 2>&1"

    rule distill_lm:
        input:
            data=P.data_dir(TR_TASK),
            cache=P.cache_pointer(TR_TASK),
            student=translation_model_input("base"),
            tokenizer=tokenizer_inputs(TR, TR_TASK),
            deepspeed=deepspeed_config_input(TR["distill"]["distributed"]),
        output:
            model=directory(P.distill_model(TR_TASK, "{point}")),
            log=P.distill_log(TR_TASK, "{point}"),
        log:
            P.log("distill_lm", "{point}"),
        benchmark:
            P.benchmark("distill_lm", "{point}")
        conda:
            "../../envs/kdsweep.yaml"
        threads: 2
        params:
            launch=launch(TR["distill"]["distributed"]),
            student=lambda w: translation_model("base"),
            teacher_tokenizer=lambda w: plan.teacher_tokenizer(TR, TR_TASK, P),
            checkpoints=lambda w: P.distill_checkpoints(TR_TASK, w.point),
            deepspeed=lambda w, input: deepspeed_arg(input),
            spec=lambda w: as_json(
                {
                    "point": TR_POINTS[w.point],
                    "distill": {
                        k: v for k, v in TR["distill"].items() if k != "sweep"
                    },
                    "prompt": TR["prompt"],
                    "max_length": TR["max_length"],
                    "packing": TR["packing"],
                    "eval_batch_size": TR["evaluate"]["batch_size"],
                }
            ),
        shell:
            "KDSWEEP_THREADS={threads} {params.launch:q} distill-lm {params.deepspeed:q} "
            "--student {params.student:q} --teacher-tokenizer {params.teacher_tokenizer:q} "
            "--data-dir {input.data:q} --cache {input.cache:q} --model-out {output.model:q} "
            "--log-out {output.log:q} --checkpoints {params.checkpoints:q} --spec {params.spec:q} > {log:q} 2>&1"
