"""What fined writes to disk and reads back: weights (safetensors with their digests),
training checkpoints, trained models and knowledge bases. No pickle anywhere."""
