"""Training: the LightningModule, the run context that builds trainers and measures models,
and the multi-process (DDP) helpers. Strategies train through these; the pipeline wires them."""
