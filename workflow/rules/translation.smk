# The translation family (kdsweep.translation), in the order the data flows: synthetic Europarl
# files (demo) -> prepare (translation/data.py: pairs to train/dev/test JSONL) -> BPE tokenizer
# (models built from a config) -> teacher training and its top-k cache (translation/teacher.py,
# sharded and resumable, in the store of kdsweep/core/cache.py) -> the base student -> one
# distillation per sweep point (translation/distill.py) -> evaluation of the base student, the
# teacher and every distilled student (translation/evaluate.py: SacreBLEU, chrF, runaways) -> their
# COMET (translation/comet_score.py), in COMET's own environment, when the config turns it on.


rule synthesize_europarl:
    output:
        directory(P.raw_europarl_dir(TR_TASK)),
    log:
        P.log("synthesize_europarl"),
    benchmark:
        P.benchmark("synthesize_europarl")
    conda:
        "../../envs/kdsweep.yaml"
    params:
        spec=as_json({**TR["synthetic"], "file_stem": TR["file_stem"]}),
    shell:
        "python -m kdsweep synthesize-europarl --out {output:q} --spec {params.spec:q} > {log:q} 2>&1"


rule prepare_translation:
    input:
        translation_inputs(),
        assets_input(),
    output:
        directory(P.data_dir(TR_TASK)),
    log:
        P.log("prepare_translation"),
    benchmark:
        P.benchmark("prepare_translation")
    conda:
        "../../envs/kdsweep.yaml"
    params:
        local_dir=(
            ["--local-dir", translation_local_dir()] if translation_local_dir() else []
        ),
        spec=as_json(
            {
                k: v
                for k, v in TR.items()
                if k
                in (
                    "source",
                    "file_stem",
                    "hub_dataset",
                    "hub_config",
                    "source_lang",
                    "target_lang",
                    "train_size",
                    "dev_size",
                    "test_size",
                    "subset_seed",
                    "max_source_words",
                    "overlong",
                    "max_length_ratio",
                )
            }
        ),
    shell:
        "python -m kdsweep prepare-translation {params.local_dir:q} --out {output:q} "
        "--spec {params.spec:q} > {log:q} 2>&1"


rule train_tokenizer_lm:
    input:
        P.data_dir(TR_TASK),
    output:
        directory(P.tokenizer_dir(TR_TASK)),
    log:
        P.log("train_tokenizer_lm"),
    benchmark:
        P.benchmark("train_tokenizer_lm")
    conda:
        "../../envs/kdsweep.yaml"
    params:
        spec=as_json({"kind": "bpe", **TR["tokenizer_training"]}),
    shell:
        "python -m kdsweep train-tokenizer --train {input:q}/train.jsonl --out {output:q} "
        "--spec {params.spec:q} > {log:q} 2>&1"


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
        tracking=lambda w, output: tracking_args(P.tracking_dir(TR_TASK, "teacher")),
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
        "--checkpoints {params.checkpoints:q} {params.tracking:q} --spec {params.spec:q} > {log:q} 2>&1"


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
        tracking=lambda w, output: tracking_args(P.tracking_dir(TR_TASK, w.point)),
        deepspeed=lambda w, input: deepspeed_arg(input),
        spec=lambda w: as_json(
            {
                "point": TR_POINTS[w.point],
                "distill": distill_settings(TR["distill"]),
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
        "--log-out {output.log:q} --checkpoints {params.checkpoints:q} {params.tracking:q} "
        "--spec {params.spec:q} > {log:q} 2>&1"


rule evaluate_translation:
    input:
        data=P.data_dir(TR_TASK),
        model=lambda w: translation_model_input(w.name),
    output:
        metrics=P.eval_json(TR_TASK, "{name}"),
        translations=P.eval_translations(TR_TASK, "{name}"),
    log:
        P.log("evaluate_translation", "{name}"),
    benchmark:
        P.benchmark("evaluate_translation", "{name}")
    wildcard_constraints:
        name="|".join(re.escape(n) for n in ["base", "teacher", *TR_POINTS]),
    conda:
        "../../envs/kdsweep.yaml"
    threads: 2
    params:
        model=lambda w: translation_model(w.name),
        spec=lambda w: as_json(
            {
                "prompt": TR["prompt"],
                "max_length": TR["max_length"],
                "evaluate": {
                    k: v
                    for k, v in TR["evaluate"].items()
                    if k not in ("samples", "comet")
                },
                "params": TR_POINTS.get(w.name, {}),
            }
        ),
    shell:
        "KDSWEEP_THREADS={threads} python -m kdsweep evaluate-translation --model {params.model:q} "
        "--data-dir {input.data:q} --out {output.metrics:q} --translations {output.translations:q} "
        "--name {wildcards.name:q} --spec {params.spec:q} > {log:q} 2>&1"


# COMET runs in its own environment (unbabel-comet caps numpy < 2, transformers < 5 and
# huggingface-hub < 1): envs/comet.yaml under --sdm conda, else the interpreter of
# translation.evaluate.comet.python (.venv-comet by default, checked before any job). kdsweep is
# not installed there: the job puts the repository's src/ on PYTHONPATH.
rule score_comet:
    input:
        P.eval_translations(TR_TASK, "{name}"),
    output:
        P.eval_comet(TR_TASK, "{name}"),
    log:
        P.log("score_comet", "{name}"),
    benchmark:
        P.benchmark("score_comet", "{name}")
    wildcard_constraints:
        name="|".join(re.escape(n) for n in ["base", "teacher", *TR_POINTS]),
    conda:
        "../../envs/comet.yaml"
    threads: 2
    params:
        src=SRC,
        python=comet_python(),
        spec=as_json({k: COMET[k] for k in ("model", "batch_size", "gpus")}),
    shell:
        "KDSWEEP_THREADS={threads} PYTHONPATH={params.src:q} {params.python:q} -m kdsweep score-comet "
        "--translations {input:q} --out {output:q} --spec {params.spec:q} > {log:q} 2>&1"
