"""The experiment config: its typed schema and closed choices, the search space, the composed sweep, and the
checks that run before Ray starts.

This face re-exports the schema (``schema.py``) and its Enums (``choices.py``); the rest is imported from its
own module: ``overrides`` (dotted keys), ``space`` (the sweep's ``space`` section), ``sweep`` (the composed
sweep), ``compose`` (Hydra, the only module that touches its runtime), ``preflight`` (checks before Ray).
"""

from finesweep.config.choices import (
    Accelerator,
    Augment,
    Confidence,
    Mode,
    Parallelism,
    Placement,
    Precision,
    Prefer,
    PriorSource,
    Sampler,
    Schedule,
    SchedulerKind,
    Strategy,
    TextMetric,
    Unit,
    progress_of,
)
from finesweep.config.schema import (
    Bound,
    ClusterConfig,
    DataConfig,
    ExperimentConfig,
    FinalConfig,
    FinetuneConfig,
    LoraConfig,
    ModelConfig,
    ObjectiveConfig,
    ObjectiveTerm,
    OptimConfig,
    ProbeConfig,
    SchedulerConfig,
    SearchConfig,
    TrackingConfig,
    TrainerConfig,
)

__all__ = ["Accelerator", "Augment", "Bound", "Confidence", "ClusterConfig", "DataConfig", "ExperimentConfig",
           "FinalConfig", "FinetuneConfig", "LoraConfig", "Mode", "ModelConfig", "ObjectiveConfig", "ObjectiveTerm",
           "OptimConfig", "Parallelism", "Placement", "Precision", "Prefer", "PriorSource", "ProbeConfig", "Sampler",
           "Schedule", "SchedulerConfig", "SchedulerKind", "SearchConfig", "Strategy", "TextMetric",
           "TrackingConfig", "TrainerConfig", "Unit", "progress_of"]
