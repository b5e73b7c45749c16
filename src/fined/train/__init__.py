"""Training: metrics, checkpoints, the trainer, and (later) the continual protocol."""
