"""Training: the one loop on Accelerate, the run's phases, checkpoints and weights formats."""
