# Stage evaluate. GLUE (kdsweep/glue/evaluate.py): accuracy, macro-F1 and per-class F1 on every dev
# split. Translation (kdsweep/translation/evaluate.py): generation on the test split, SacreBLEU,
# chrF, COMET, runaway rate, for the base student, the teacher and every distilled student.

if GLUE:

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
                    "max_length": config["glue"]["max_length"],
                    "batch_size": config["evaluate"]["batch_size"],
                    "params": POINTS[w.point],
                }
            ),
        shell:
            "KDSWEEP_THREADS={threads} python -m kdsweep evaluate --task {wildcards.task:q} --model {input.model:q} "
            "--data-dir {input.data:q} --out {output:q} --name {wildcards.point:q} --spec {params.spec:q} > {log:q} 2>&1"

    rule evaluate_teacher:
        input:
            data=P.data_dir("{task}"),
            model=lambda w: teacher_model_input(config, w.task),
        output:
            P.eval_json("{task}", "teacher"),
        log:
            P.log("evaluate_teacher", "{task}"),
        benchmark:
            P.benchmark("evaluate_teacher", "{task}")
        conda:
            "../../envs/kdsweep.yaml"
        params:
            model=lambda w: plan.teacher_model(config, w.task, P),
            spec=as_json(
                {
                    "max_length": config["glue"]["max_length"],
                    "batch_size": config["evaluate"]["batch_size"],
                }
            ),
        shell:
            "KDSWEEP_THREADS={threads} python -m kdsweep evaluate --task {wildcards.task:q} --model {params.model:q} "
            "--data-dir {input.data:q} --out {output:q} --name teacher --spec {params.spec:q} > {log:q} 2>&1"


if TR:

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
                        k: v for k, v in TR["evaluate"].items() if k != "samples"
                    },
                    "params": TR_POINTS.get(w.name, {}),
                }
            ),
        shell:
            "KDSWEEP_THREADS={threads} python -m kdsweep evaluate-translation --model {params.model:q} "
            "--data-dir {input.data:q} --out {output.metrics:q} --translations {output.translations:q} "
            "--name {wildcards.name:q} --spec {params.spec:q} > {log:q} 2>&1"
