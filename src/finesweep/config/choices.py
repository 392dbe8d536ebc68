"""The closed choices of the config schema, as Enums: sampler, scheduler, schedule, precision, ...

YAML names a member by its value (``precision: bf16-mixed``); OmegaConf rejects anything else with
the list of valid names before a trial starts. ``finesweep.config`` re-exports every one of them.
"""

from __future__ import annotations

import enum
import math
from typing import Any, Iterable, Literal, Mapping, Optional


class Sampler(str, enum.Enum):
    """How Optuna proposes the next trial."""

    grid = "grid"
    random = "random"
    tpe = "tpe"
    """TPE; with several objectives Optuna's multi-objective TPE (MOTPE)."""
    gp = "gp"
    """Optuna's Gaussian process with log expected improvement (MOBSTER's and Hyper-Tune's model): the most
    sample-efficient on a flat space of numbers, about 50 ms a proposal (``search/gp_acquisition.py``)."""
    nsga2 = "nsga2"
    """Optuna's NSGA-II: a genetic search for a Pareto front (one or several objectives)."""
    auto = "auto"
    """``gp`` where it serves (one objective, no constraints, no prior, no conditional keys), else ``tpe``:
    settled when the sweep is composed (``config/sampler_choice.py``)."""


class PriorSource(str, enum.Enum):
    """Where the search's prior belief about each searched key comes from (``search.prior``)."""

    none = "none"
    """No prior, except where a space entry sets its own ``prior:``."""
    config = "config"
    """Each searched key's value in the composed config (the recipe in ``conf/``) is its prior's mode."""


class Confidence(str, enum.Enum):
    """How sure a prior is (``prior_confidence``): how narrow its distribution around the value is."""

    low = "low"
    medium = "medium"
    high = "high"


class Augment(str, enum.Enum):
    """On-the-fly augmentation of training images (``data.augment``); validation and test images never are."""

    none = "none"
    flip = "flip"
    """A horizontal flip, half the time."""
    crop_flip = "crop_flip"
    """A random resized crop (8-100% of the area, aspect 3/4-4/3) back to the input size, then the flip."""
    trivial = "trivial"
    """TrivialAugment (one random operation of random strength per image), then the crop and the flip."""


class Unit(str, enum.Enum):
    """What a trial's budget, its reports and ASHA's rungs count: epochs, or optimiser steps."""

    epochs = "epochs"
    steps = "steps"

    @property
    def key(self) -> str:
        """The key of a trial's reports that holds its progress in this unit: ``epoch`` or ``step``."""
        return "epoch" if self is Unit.epochs else "step"


def progress_of(metrics: Mapping[str, Any], default: int = 0) -> int:
    """A report's progress in its sweep's unit: its ``step`` when it has one (a step-wise sweep), else its
    ``epoch``; ``default`` when it has neither."""
    value = metrics.get("step", metrics.get("epoch"))
    return default if value is None else int(value)


class TextMetric(str, enum.Enum):
    """What generated text is scored by besides ROUGE-1/2/L and exact match (``data.metric``)."""

    rouge = "rouge"
    bleu = "bleu"


class SchedulerKind(str, enum.Enum):
    """How Ray Tune decides which running trials to stop early."""

    asha = "asha"
    fifo = "fifo"


class Mode(str, enum.Enum):
    """Whether the objective metric is maximised or minimised: the one place that says which value is better."""

    max = "max"
    min = "min"

    def better(self, value: float, than: Optional[float]) -> bool:
        """Whether ``value`` beats ``than`` (anything but NaN beats None; NaN beats nothing)."""
        if math.isnan(value):
            return False
        if than is None:
            return True
        return value > than if self is Mode.max else value < than

    def best(self, values: Iterable[float]) -> float:
        """The best of some values."""
        return max(values) if self is Mode.max else min(values)

    def rank_key(self, value: float) -> float:
        """A sort key that puts the best value first."""
        return -value if self is Mode.max else value

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        """Optuna's name for it: ``maximize`` or ``minimize``."""
        return "maximize" if self is Mode.max else "minimize"


class Schedule(str, enum.Enum):
    """Learning-rate schedule: the step-wise schedules of ``transformers.get_scheduler``, by its names.

    Its metric-driven ones (reduce_lr_on_plateau, greedy) are left out: they watch a metric rather
    than span the trial's budget, which ASHA's equal-schedule comparison relies on.
    """

    linear = "linear"
    cosine = "cosine"
    cosine_with_restarts = "cosine_with_restarts"
    polynomial = "polynomial"
    constant = "constant"
    """No warmup at all (optim.warmup_ratio is ignored); constant_with_warmup warms up first."""
    constant_with_warmup = "constant_with_warmup"
    inverse_sqrt = "inverse_sqrt"
    cosine_with_min_lr = "cosine_with_min_lr"
    cosine_warmup_with_min_lr = "cosine_warmup_with_min_lr"
    warmup_stable_decay = "warmup_stable_decay"


Precision = enum.Enum(  # functional form: the values are Lightning's names, which are not identifiers
    "Precision",
    [("32-true", "32-true"), ("16-mixed", "16-mixed"), ("bf16-mixed", "bf16-mixed"), ("16-true", "16-true"),
     ("bf16-true", "bf16-true"), ("64-true", "64-true"), ("auto", "auto")],
    type=str,
)
"""Lightning's ``Trainer(precision=...)`` values (its aliases 32, 16, bf16 are spelled out), and ``auto``:
decided in each trial for the device Ray gave it (see execution/trial.py)."""


class Accelerator(str, enum.Enum):
    """Lightning's ``Trainer(accelerator=...)``: where a trial computes."""

    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"
    cuda = "cuda"
    mps = "mps"


class Strategy(str, enum.Enum):
    """Which weights a trial trains."""

    full = "full"
    head_only = "head_only"
    freeze = "freeze"
    gradual_unfreeze = "gradual_unfreeze"
    lora = "lora"


class Parallelism(str, enum.Enum):
    """How a trial of several workers (``cluster.workers_per_trial``) splits its training."""

    ddp = "ddp"
    """Every worker holds the whole model and trains on its share of each batch; gradients are averaged."""
    fsdp = "fsdp"
    """Weights, gradients and optimiser state are sharded over the workers (a model larger than one device)."""


class Placement(str, enum.Enum):
    """Where a trial's workers go: Ray's placement-group strategy."""

    pack = "pack"
    """As few nodes as possible (fast links between the workers)."""
    spread = "spread"
    """Different nodes where possible (one node's loss costs one worker)."""


class Prefer(str, enum.Enum):
    """Which configuration model selection registers."""

    winner = "winner"
    """The best-ranked configuration, whatever the verdict against the recipe says."""
    recipe_unless_better = "recipe_unless_better"
    """The recipe, unless the winner beats it beyond noise (the verdict's interval excludes zero)."""
