"""The translation family (decoder LMs, top-k cache): data -> teacher -> distill -> evaluate -> report."""
