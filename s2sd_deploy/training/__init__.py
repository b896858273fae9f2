"""Training: configuration, data, model, losses, the training loop and the run directory (needs torch)."""
