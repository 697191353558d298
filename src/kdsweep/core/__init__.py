"""The shared core: config, sweeps, paths, the cache store, the trainer, losses, models, report. Imports no family."""
