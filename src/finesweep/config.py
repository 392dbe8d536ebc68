"""Typed schema of the composed experiment config.

YAML in ``conf/`` and ``sweeps/`` only sets values; these dataclasses say what the values may be.
The CLI converts the composed Hydra config into them once (``OmegaConf.to_object``), and each
``__post_init__`` checks the rules of its own section. Everything downstream of the CLI works on
these plain, picklable objects; nothing else touches Hydra or OmegaConf.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

from finesweep.errors import ConfigError
from finesweep.metrics import OBJECTIVE_METRICS


class Sampler(str, enum.Enum):
    """How Optuna proposes the next trial."""

    grid = "grid"
    random = "random"
    tpe = "tpe"


class SchedulerKind(str, enum.Enum):
    """How Ray Tune decides which running trials to stop early."""

    asha = "asha"
    fifo = "fifo"


class Mode(str, enum.Enum):
    """Whether the objective metric is maximised or minimised."""

    max = "max"
    min = "min"


class Schedule(str, enum.Enum):
    """Learning-rate schedule after the linear warmup."""

    linear = "linear"
    cosine = "cosine"
    constant = "constant"


class Strategy(str, enum.Enum):
    """Which weights a trial trains."""

    full = "full"
    head_only = "head_only"
    freeze = "freeze"
    gradual_unfreeze = "gradual_unfreeze"
    lora = "lora"


class Task(str, enum.Enum):
    """What the label column holds; ``auto`` decides from the data (non-integer numbers = regression)."""

    auto = "auto"
    classification = "classification"
    regression = "regression"


PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "64-true")


@dataclass
class ModelConfig:
    """The pretrained model to fine-tune."""

    name_or_path: str = MISSING
    """A local Hugging Face model folder or a hub id (hub ids need network access)."""
    dropout: Optional[float] = None
    """Hidden and classifier dropout; null keeps the pretrained model's own."""

    def __post_init__(self) -> None:
        if _incomplete(self):
            return  # a schema default, not yet filled in by YAML
        local = Path(self.name_or_path).expanduser()
        if local.exists():
            self.name_or_path = str(local.resolve())
        _raise_problems([
            _check(self.dropout is None or 0.0 <= self.dropout < 1.0, "model.dropout", self.dropout,
                   "must be in [0, 1) or null", "Use e.g. 0.1, or null for the model's own."),
        ])


@dataclass
class DataConfig:
    """The labelled data set and how it is split and tokenised."""

    path: str = MISSING
    """CSV, JSONL or Parquet file."""
    text_column: str = "text"
    label_column: str = "label"
    text_pair_column: Optional[str] = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    """Seed of the stratified split and of the ``max_samples`` subsample."""
    max_samples: Optional[int] = None
    """Stratified subsample of the whole file before splitting (None = every row)."""
    max_length: int = 128
    """Tokens per example after truncation."""
    batch_size: int = 32
    encoding: str = "utf-8"
    """Text encoding of CSV/JSONL files; undecodable bytes are replaced, never fatal."""
    task: Task = Task.auto
    """classification, regression, or auto: regression when the labels are non-integer numbers."""

    def __post_init__(self) -> None:
        if _incomplete(self):
            return  # a schema default, not yet filled in by YAML
        self.path = str(Path(self.path).expanduser().resolve())
        problems = [
            _check(0.0 < self.val_fraction < 1.0, "data.val_fraction", self.val_fraction,
                   "must be in (0, 1)", "Use e.g. 0.1."),
            _check(0.0 <= self.test_fraction < 1.0, "data.test_fraction", self.test_fraction,
                   "must be in [0, 1)", "Use e.g. 0.1."),
            _check(self.val_fraction + self.test_fraction < 1.0, "data.val_fraction",
                   self.val_fraction + self.test_fraction,
                   "plus data.test_fraction must leave training data (sum < 1)",
                   "Lower one of them."),
            _check(self.max_samples is None or self.max_samples >= 10, "data.max_samples",
                   self.max_samples, "must be at least 10 or null", "Use null for every row."),
            _check(self.max_length >= 8, "data.max_length", self.max_length,
                   "must be at least 8", "Use e.g. 128."),
            _check(self.batch_size >= 1, "data.batch_size", self.batch_size,
                   "must be at least 1", "Use e.g. 32."),
        ]
        _raise_problems(problems)


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule."""

    lr: float = 5.0e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    """Fraction of the trial's full budget (scheduler.max_epochs) spent warming up linearly."""
    schedule: Schedule = Schedule.linear

    def __post_init__(self) -> None:
        if _incomplete(self):
            return  # a schema default, not yet filled in by YAML
        _raise_problems([
            _check(self.lr > 0, "optim.lr", self.lr, "must be > 0", "Use e.g. 5e-5."),
            _check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay,
                   "must be >= 0", "Use e.g. 0.01."),
            _check(0.0 <= self.warmup_ratio < 1.0, "optim.warmup_ratio", self.warmup_ratio,
                   "must be in [0, 1)", "Use e.g. 0.1."),
        ])


@dataclass
class TrainerConfig:
    """The Lightning Trainer of every trial."""

    precision: str = "32-true"
    gradient_clip_val: Optional[float] = None
    accelerator: str = "auto"
    seed: int = 0
    """Seed of weight init and batch order, the same for every trial so only hyperparameters differ."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing (classification only)."""
    accumulate_grad_batches: int = 1
    """Batches per optimiser step."""
    early_stopping_patience: Optional[int] = None
    """Stop a trial after this many epochs without improving the objective; null = off."""

    def __post_init__(self) -> None:
        if _incomplete(self):
            return  # a schema default, not yet filled in by YAML
        _raise_problems([
            _check(self.precision in PRECISIONS, "trainer.precision", self.precision,
                   f"must be one of {', '.join(PRECISIONS)}", "Use 32-true on CPU."),
            _check(self.gradient_clip_val is None or self.gradient_clip_val > 0,
                   "trainer.gradient_clip_val", self.gradient_clip_val, "must be > 0 or null",
                   "Use null to turn clipping off."),
            _check(0.0 <= self.label_smoothing < 1.0, "trainer.label_smoothing", self.label_smoothing,
                   "must be in [0, 1)", "Use e.g. 0.1."),
            _check(self.accumulate_grad_batches >= 1, "trainer.accumulate_grad_batches",
                   self.accumulate_grad_batches, "must be at least 1", "Use 1 to step every batch."),
            _check(self.early_stopping_patience is None or self.early_stopping_patience >= 1,
                   "trainer.early_stopping_patience", self.early_stopping_patience, "must be >= 1 or null",
                   "Use null to turn early stopping off."),
        ])


@dataclass
class LoraConfig:
    """LoRA adapters (peft) for ``finetune.strategy: lora``."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: List[str] = field(default_factory=lambda: ["query", "value"])
    """Names of the linear layers that get adapters (BERT: query, key, value, dense)."""

    def __post_init__(self) -> None:
        _raise_problems([
            _check(self.r >= 1, "finetune.lora.r", self.r, "must be at least 1", "Use 4, 8 or 16."),
            _check(self.alpha > 0, "finetune.lora.alpha", self.alpha, "must be > 0", "Use e.g. 2 * r."),
            _check(0.0 <= self.dropout < 1.0, "finetune.lora.dropout", self.dropout, "must be in [0, 1)",
                   "Use e.g. 0.1."),
            _check(len(self.target_modules) > 0, "finetune.lora.target_modules", self.target_modules,
                   "must name at least one module", "Use e.g. [query, value]."),
        ])


@dataclass
class FinetuneConfig:
    """How a trial fine-tunes: which weights train, and at which learning rate."""

    strategy: Strategy = Strategy.full
    freeze_layers: int = 2
    """For ``freeze``: the embeddings and this many bottom encoder layers are frozen."""
    unfreeze_every: int = 1
    """For ``gradual_unfreeze``: epochs between unfreezing one more encoder layer, from the top."""
    llrd: float = 1.0
    """Layer-wise lr decay: encoder layer l of L trains at lr * llrd^(L - l); 1.0 = off."""
    head_lr_mult: float = 1.0
    """The classification head's lr is optim.lr * head_lr_mult."""
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        _raise_problems([
            _check(self.freeze_layers >= 0, "finetune.freeze_layers", self.freeze_layers, "must be >= 0",
                   "Use e.g. 2."),
            _check(self.unfreeze_every >= 1, "finetune.unfreeze_every", self.unfreeze_every,
                   "must be at least 1", "Use e.g. 1."),
            _check(0.0 < self.llrd <= 1.0, "finetune.llrd", self.llrd, "must be in (0, 1]",
                   "Use e.g. 0.8, or 1.0 for off."),
            _check(self.head_lr_mult > 0, "finetune.head_lr_mult", self.head_lr_mult, "must be > 0",
                   "Use e.g. 1.0."),
        ])


@dataclass
class FinalConfig:
    """Model selection after the search."""

    top_k: int = 1
    """Configurations to re-train with fresh seeds (when seeds > 0)."""
    seeds: int = 0
    """Fresh seeds per top-k configuration; the winner is the best mean. 0 = no re-training."""

    def __post_init__(self) -> None:
        _raise_problems([
            _check(self.top_k >= 1, "final.top_k", self.top_k, "must be at least 1", "Use e.g. 3."),
            _check(self.seeds >= 0, "final.seeds", self.seeds, "must be >= 0", "Use 0 to skip re-training."),
        ])


@dataclass
class TrackingConfig:
    """Where MLflow records the sweep."""

    uri: str = MISSING
    """MLflow tracking URI: sqlite:///abs/path.db, http://host:port, ..."""
    artifact_root: str = MISSING
    """Artifact location of experiments this sweep creates (absolute path or URI)."""
    experiment: str = ""
    """MLflow experiment name; empty = the sweep name."""
    registered_model: str = ""
    """Model Registry name the winner is registered under; empty = the sweep name."""


@dataclass
class ClusterConfig:
    """Where Ray runs the trials."""

    address: str = ""
    """Address of an existing Ray cluster ('auto', 'ray://host:10001'); empty = start a local Ray."""
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    storage_path: str = MISSING
    """Where Ray Tune keeps trial checkpoints; shared storage on a multi-node cluster."""
    log_dir: str = MISSING
    """Where finesweep writes Ray's own log output."""

    def __post_init__(self) -> None:
        if _incomplete(self):
            return  # a schema default, not yet filled in by YAML
        _raise_problems([
            _check(self.cpus_per_trial > 0, "cluster.cpus_per_trial", self.cpus_per_trial,
                   "must be > 0", "Use e.g. 1."),
            _check(self.gpus_per_trial >= 0, "cluster.gpus_per_trial", self.gpus_per_trial,
                   "must be >= 0", "Use 0 on CPU-only machines."),
        ])


@dataclass
class ObjectiveConfig:
    """The metric the search optimises; declared only in the sweep file."""

    metric: str = MISSING
    mode: Mode = MISSING

    def __post_init__(self) -> None:
        if _incomplete(self):
            return  # a schema default, not yet filled in by YAML
        _raise_problems([
            _check(self.metric in OBJECTIVE_METRICS, "objective.metric", repr(self.metric),
                   f"must be a metric every trial reports ({', '.join(OBJECTIVE_METRICS)})",
                   "Pick one of those."),
        ])


@dataclass
class SearchConfig:
    """How many trials, proposed by which Optuna sampler."""

    sampler: Sampler = Sampler.tpe
    num_trials: Optional[int] = None
    """Trials to run; a grid runs every combination once and may leave this null."""
    max_concurrent: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if _incomplete(self):
            return  # a schema default, not yet filled in by YAML
        _raise_problems([
            _check(self.num_trials is None or self.num_trials >= 1, "search.num_trials",
                   self.num_trials, "must be at least 1", "Use e.g. 16."),
            _check(self.max_concurrent >= 1, "search.max_concurrent", self.max_concurrent,
                   "must be at least 1", "Use the number of trials that fit on your machine."),
        ])


@dataclass
class SchedulerConfig:
    """Early termination; its unit is epochs (every trial reports once per epoch)."""

    kind: SchedulerKind = SchedulerKind.asha
    max_epochs: int = 3
    """Full budget of a trial in epochs; ASHA's max_t and the span of the warmup/decay schedule."""
    grace_period: int = 1
    """Epochs every trial runs before ASHA may stop it."""
    reduction_factor: float = 2.0

    def __post_init__(self) -> None:
        if _incomplete(self):
            return  # a schema default, not yet filled in by YAML
        _raise_problems([
            _check(self.max_epochs >= 1, "scheduler.max_epochs", self.max_epochs,
                   "must be at least 1", "Use e.g. 3."),
            _check(1 <= self.grace_period <= self.max_epochs, "scheduler.grace_period",
                   self.grace_period, f"must be between 1 and scheduler.max_epochs ({self.max_epochs})",
                   "Lower grace_period or raise max_epochs."),
            _check(self.reduction_factor >= 2, "scheduler.reduction_factor",
                   self.reduction_factor, "must be >= 2", "Use 2, 3 or 4."),
        ])


@dataclass
class ExperimentConfig:
    """The whole composed config: the experiment (``conf/``) plus the sweep file."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    final: FinalConfig = field(default_factory=FinalConfig)
    space: Dict[str, Any] = field(default_factory=dict)
    """Search space: dotted config key -> distribution (see search_space.py)."""
    name: str = ""
    """The sweep's name, set by the CLI from the sweep file name."""

    def __post_init__(self) -> None:
        if _incomplete(self.objective):
            return  # the schema's default instance; the composed config always has an objective
        needs_count = self.search.sampler is not Sampler.grid
        _raise_problems([
            _check(not needs_count or self.search.num_trials is not None, "search.num_trials",
                   self.search.num_trials, f"is required for sampler {self.search.sampler.value}",
                   "Set search.num_trials, e.g. 16."),
        ])

    @property
    def experiment_name(self) -> str:
        """MLflow experiment: ``tracking.experiment`` or the sweep name."""
        return self.tracking.experiment or self.name

    @property
    def registered_model_name(self) -> str:
        """Model Registry name: ``tracking.registered_model`` or the sweep name."""
        return self.tracking.registered_model or self.name


def with_overrides(config: Any, values: Dict[str, Any]) -> Any:
    """Return a copy of a config dataclass with dotted keys set, values cast to the field types.

    Raises:
        KeyError: a key names no field.
    """
    for key, value in values.items():
        config = _replace_path(config, key.split("."), value)
    return config


def has_key(config: Any, key: str) -> bool:
    """Whether a dotted key names a leaf (non-dataclass) field of the config."""
    node = config
    for part in key.split("."):
        if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
            return False
        node = getattr(node, part)
    return not dataclasses.is_dataclass(node)


def field_type(config: Any, key: str) -> Any:
    """The annotated type of the leaf field a dotted key names."""
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = getattr(node, part)
    return typing.get_type_hints(type(node))[leaf]


def _replace_path(node: Any, parts: List[str], value: Any) -> Any:
    head, rest = parts[0], parts[1:]
    if not dataclasses.is_dataclass(node) or head not in {f.name for f in dataclasses.fields(node)}:
        raise KeyError(".".join(parts))
    if rest:
        new = _replace_path(getattr(node, head), rest, value)
    else:
        new = _cast(typing.get_type_hints(type(node))[head], value)
    return dataclasses.replace(node, **{head: new})


def _cast(annotation: Any, value: Any) -> Any:
    if value is None:
        return None
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    target = args[0] if typing.get_origin(annotation) is typing.Union and len(args) == 1 else annotation
    if isinstance(target, type) and issubclass(target, enum.Enum):
        return target(value)
    if target is float and isinstance(value, (int, float)):
        return float(value)
    if target is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _incomplete(section: Any) -> bool:
    return any(getattr(section, f.name) == MISSING for f in dataclasses.fields(section))


def _check(ok: bool, key: str, value: Any, rule: str, fix: str) -> Optional[str]:
    return None if ok else f"{key} {rule}, got {value}. {fix}"


def _raise_problems(problems: List[Optional[str]]) -> None:
    found = [p for p in problems if p]
    if found:
        raise ConfigError("; ".join(found))
