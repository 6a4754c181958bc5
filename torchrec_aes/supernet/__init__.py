"""What weight-sharing search methods share: the elastic prefix-mask EBC (`elastic`), rank-identical
step-seeded sampling (`sampling`) and the memoised fixed-slice scorer (`scorer`). Supernets are trained
by the one `Trainer` with hooks (`train/hooks.py`)."""
