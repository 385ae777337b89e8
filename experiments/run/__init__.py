"""One run: config validation, settings read from the config, the baseline phase, the pipeline, the end-of-run latency comparison and deploy step, sweeps."""
