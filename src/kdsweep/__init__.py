"""kdsweep: knowledge-distillation pipeline. The Snakemake rules call the stage modules here:

prepare_glue -> tokenizer -> teacher (fine-tune, cache) -> distill -> evaluate -> report
"""

__version__ = "0.1.0"
