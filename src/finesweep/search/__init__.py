"""Deciding: which configuration runs next (the Optuna searcher and its samplers, fidelity-aware TPE) and
which running trial stops (ASHA)."""
