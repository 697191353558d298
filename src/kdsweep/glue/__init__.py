"""The GLUE family (sentence-pair classification): data -> teacher -> distill -> evaluate -> report."""
