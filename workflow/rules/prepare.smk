# Stage prepare: normalized splits with a manifest, and tokenizers trained locally for models
# built from a config. GLUE (kdsweep/glue/data.py): MNLI/QQP to JSONL. Translation
# (kdsweep/translation/data.py): Europarl en-fr pairs to train/dev/test JSONL. The hub
# assets the config names are prefetched first (kdsweep/core/hub.py), where Snakemake runs.

if ASSETS:

    rule prefetch_assets:
        output:
            P.assets_manifest(),
        log:
            P.log("prefetch_assets"),
        benchmark:
            P.benchmark("prefetch_assets")
        localrule: True
        conda:
            "../../envs/kdsweep.yaml"
        params:
            env=prefetch_env(),
            spec=prefetch_spec(),
        shell:
            "{params.env:q} python -m kdsweep prefetch --out {output:q} --spec {params.spec:q} > {log:q} 2>&1"


if GLUE:

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
            spec=as_json(config["glue"]["synthetic"]),
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
                    k: config["glue"][k]
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
            spec=as_json(config["glue"]["tokenizer_training"]),
        shell:
            "python -m kdsweep train-tokenizer --train {input:q}/train.jsonl --out {output:q} "
            "--spec {params.spec:q} > {log:q} 2>&1"


if TR:

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
                ["--local-dir", translation_local_dir()]
                if translation_local_dir()
                else []
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
