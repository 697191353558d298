# Stage distill: one student per sweep point, from the teacher cache (kdflow/distill.py),
# one process per GPU the job holds (kdflow/launch.py: torchrun, srun across nodes) with the
# DeepSpeed ZeRO config named by distill.distributed (workflow/deepspeed/).
# Checkpoints go to distill/<task>/<point>/checkpoints/, which is not an output, so a failed
# or preempted job resumes from them when rerun.


rule distill:
    input:
        data=P.data_dir("{task}"),
        cache=P.cache_pointer("{task}"),
        teacher=teacher_model_input,
        tokenizer=tokenizer_inputs,
        deepspeed=deepspeed_config_input,
    output:
        model=directory(P.distill_model("{task}", "{point}")),
        log=P.distill_log("{task}", "{point}"),
    log:
        P.log("distill", "{task}", "{point}"),
    benchmark:
        P.benchmark("distill", "{task}", "{point}")
    conda:
        "../../envs/kdflow.yaml"
    threads: 2
    params:
        teacher=lambda w: plan.teacher_model(config, w.task, P),
        teacher_tokenizer=lambda w: plan.teacher_tokenizer(config, w.task, P),
        student_tokenizer=lambda w: plan.student_tokenizer(config, w.task, P),
        checkpoints=lambda w: P.distill_checkpoints(w.task, w.point),
        deepspeed=lambda w, input: (
            f"--deepspeed {input.deepspeed}" if input.deepspeed else ""
        ),
        cpu_processes=config["distill"]["distributed"]["cpu_processes"],
        spec=lambda w: as_json(
            {
                "point": POINTS[w.point],
                "student": config["student"],
                "distill": {
                    k: v for k, v in config["distill"].items() if k != "sweep"
                },
                "max_length": config["glue"]["max_length"],
                "eval_batch_size": config["evaluate"]["batch_size"],
            }
        ),
    shell:
        "KDFLOW_THREADS={threads} python -m kdflow.launch --cpu-processes {params.cpu_processes} -- "
        "distill --task {wildcards.task} {params.deepspeed} "
        "--teacher {params.teacher} --teacher-tokenizer {params.teacher_tokenizer} "
        "--student-tokenizer {params.student_tokenizer} --data-dir {input.data} --cache {input.cache} "
        "--model-out {output.model} --log-out {output.log} --checkpoints {params.checkpoints} "
        "--spec {params.spec:q} > {log} 2>&1"
