"""finesweep: hyperparameter sweeps for fine-tuning pretrained models."""

__version__ = "0.1.0"
