"""Training methods that plug into the trainer (loss weighting and the like)."""
