"""What a run keeps: atomic files and locks, the baseline cache, the results store, W&B tracking."""
