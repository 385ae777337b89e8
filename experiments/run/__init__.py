"""One run: config validation, the baseline phase, the LightningModule, the pipeline, sweeps and DDP."""
