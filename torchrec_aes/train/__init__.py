"""Training: one trainer for `train` and every retraining inside a search."""
