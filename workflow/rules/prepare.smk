# Stage prepare: GLUE splits normalized to JSONL with a manifest (kdflow/prepare_glue.py).


rule synthesize_glue:
    output:
        directory(P.raw_glue_dir("{task}")),
    log:
        P.log("synthesize_glue", "{task}"),
    benchmark:
        P.benchmark("synthesize_glue", "{task}")
    conda:
        "../../envs/kdflow.yaml"
    params:
        spec=as_json(config["glue"]["synthetic"]),
    shell:
        "python -m kdflow synthesize-glue --task {wildcards.task} --out {output} "
        "--spec {params.spec:q} > {log} 2>&1"


rule prepare_glue:
    input:
        glue_tsv_input,
    output:
        directory(P.data_dir("{task}")),
    log:
        P.log("prepare_glue", "{task}"),
    benchmark:
        P.benchmark("prepare_glue", "{task}")
    conda:
        "../../envs/kdflow.yaml"
    params:
        tsv=glue_tsv_arg,
        spec=as_json(
            {
                k: config["glue"][k]
                for k in ("source", "hub_dataset", "max_train_examples", "subset_seed")
            }
        ),
    shell:
        "python -m kdflow prepare-glue --task {wildcards.task} {params.tsv} --out {output} "
        "--spec {params.spec:q} > {log} 2>&1"


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
        "../../envs/kdflow.yaml"
    params:
        spec=as_json(config["glue"]["tokenizer_training"]),
    shell:
        "python -m kdflow train-tokenizer --train {input}/train.jsonl --out {output} "
        "--spec {params.spec:q} > {log} 2>&1"
