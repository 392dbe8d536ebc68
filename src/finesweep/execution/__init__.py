"""Executing: the only place that assembles Ray Tune objects (the tuner), joins Ray (the cluster), and runs a
trial (the trainable), with what it leaves behind (checkpoints) and how it fails (failures)."""
