# Stage prefetch: the hub assets the config names (models, tokenizers, datasets, the COMET
# checkpoint; kdsweep/core/hub.py) are downloaded where Snakemake runs (a login node with
# internet) into the Hugging Face cache; the compute jobs then run offline. Alone:
#   snakemake prefetch_assets --cores 1 --configfile config/config.yaml


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
