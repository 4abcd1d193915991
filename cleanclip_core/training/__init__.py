"""One training loop for pretraining and cleaning, with its views, objectives and checkpoints."""
