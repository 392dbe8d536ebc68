"""Typed schema of the composed experiment config.

YAML in ``conf/`` and ``sweeps/`` only sets values; these dataclasses say what the values may be.
The CLI converts the composed Hydra config into them once (``OmegaConf.to_object``), and each
``__post_init__`` checks the rules of its own section. Everything downstream of the CLI works on
these plain, picklable objects; nothing else touches Hydra or OmegaConf. The closed choices
(Enums) live in ``choices.py`` and are re-exported here.
"""

from __future__ import annotations

import codecs
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import MISSING

from finesweep.config.choices import (
    Accelerator,
    Augment,
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
)
from finesweep.errors import ConfigError


@dataclass
class ModelConfig:
    """The pretrained model to fine-tune."""

    name_or_path: str = MISSING
    """A local Hugging Face model folder or a hub id (hub ids need network access)."""
    dropout: Optional[float] = None
    """Hidden and classifier dropout; null keeps the pretrained model's own."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of keeping them: less memory, ~30% more time."""
    load_in_4bit: bool = False
    """QLoRA: the frozen base weights in 4-bit NF4 (bitsandbytes, CUDA only), LoRA adapters in 16/32 bits."""

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
    """CSV, TSV, JSONL or Parquet file; a CoNLL file (token classification); a folder of images, one sub-folder
    per class (image classification), or of train/val/test files or folders used as the splits."""
    text_column: str = "text"
    label_column: str = "label"
    text_pair_column: Optional[str] = None
    image_column: str = "image"
    """Image classification from a table: the column of image paths (relative to the table's folder)."""
    image_size: Optional[int] = None
    """Image classification: pixels per side images are prepared at; null = the model's own input size."""
    map_above_mb: float = 1024.0
    """Image classification: prepared images above this many MiB are memory-mapped files under
    ``cluster.storage_path`` that every trial reads without a copy, instead of arrays in Ray's object store
    (0 = always)."""
    augment: Augment = Augment.none
    """Image classification: on-the-fly augmentation of training images (none, flip, crop_flip, trivial)."""
    mixup: float = 0.0
    """Image classification: mixup's Beta(alpha, alpha) on training batches; 0 = off."""
    cutmix: float = 0.0
    """Image classification: CutMix's Beta(alpha, alpha) on training batches; 0 = off (with mixup too, each
    batch takes one of the two, at random)."""
    tokens_column: str = "tokens"
    """Token classification from JSONL / Parquet: the column holding each sentence's list of words."""
    tags_column: str = "tags"
    """Token classification from JSONL / Parquet: the column holding each sentence's list of tags."""
    prompt_column: str = "prompt"
    """Causal LM, supervised fine-tuning: the prompt column (no loss on its tokens), with ``response_column``."""
    response_column: str = "response"
    """Causal LM, supervised fine-tuning: the response column (the loss is on its tokens only)."""
    messages_column: str = "messages"
    """Causal LM, chat: a column of turn lists (``[{role, content}, ...]``), rendered with the tokenizer's chat
    template; the loss is on the assistant turns."""
    source_column: str = "source"
    """Seq2seq: the input text column."""
    target_column: str = "target"
    """Seq2seq: the output text column."""
    max_target_length: int = 64
    """Seq2seq: target tokens kept; both generative tasks: new tokens generated when scoring generated text."""
    pack: bool = False
    """Causal LM: concatenate short examples into ``max_length`` blocks (attention kept inside each example where
    the model supports it)."""
    metric: TextMetric = TextMetric.rouge
    """Generated text is scored by ROUGE-1/2/L and exact match, plus BLEU with ``bleu``."""
    generate_every_epoch: bool = False
    """Causal LM: also score generated validation text at every report of every trial (not only the winner)."""
    val_max_rows: Optional[int] = None
    """Validation rows scored at each report of a trial (the first ones of the split); null = all. Model
    selection always scores the whole split."""
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
    task: str = "auto"
    """A task's name (``finesweep.tasks``: classification, regression, ...), or auto: text classification, or
    regression when the labels are non-integer numbers. Checked against the registered tasks before Ray starts."""
    fold: Optional[int] = None
    """Set by model selection on its cross-validation runs (``final.cv_folds``): which fold of train + validation
    validates; null = the configured split. Not a value to set or search."""

    def __post_init__(self) -> None:
        if _incomplete(self):
            return  # a schema default, not yet filled in by YAML
        self.path = str(Path(self.path).expanduser().resolve())
        _raise_problems([
            _check(0.0 < self.val_fraction < 1.0, "data.val_fraction", self.val_fraction,
                   "must be in (0, 1)", "Use e.g. 0.1."),
            _check(0.0 <= self.test_fraction < 1.0, "data.test_fraction", self.test_fraction,
                   "must be in [0, 1)", "Use e.g. 0.1."),
            _check(self.val_fraction + self.test_fraction < 1.0, "data.val_fraction",
                   self.val_fraction + self.test_fraction,
                   "plus data.test_fraction must leave training data (sum < 1)", "Lower one of them."),
            _check(self.max_samples is None or self.max_samples >= 10, "data.max_samples",
                   self.max_samples, "must be at least 10 or null", "Use null for every row."),
            _check(self.max_length >= 8, "data.max_length", self.max_length, "must be at least 8", "Use e.g. 128."),
            _check(self.max_target_length >= 1, "data.max_target_length", self.max_target_length,
                   "must be at least 1", "Use e.g. 64."),
            _check(self.val_max_rows is None or self.val_max_rows >= 1, "data.val_max_rows", self.val_max_rows,
                   "must be at least 1 or null", "Use null to score the whole validation split at each report."),
            _check(self.image_size is None or self.image_size >= 16, "data.image_size", self.image_size,
                   "must be at least 16 or null", "Use e.g. 224, or null for the model's own input size."),
            _check(self.mixup >= 0, "data.mixup", self.mixup, "must be >= 0", "Use e.g. 0.2, or 0 for off."),
            _check(self.map_above_mb >= 0, "data.map_above_mb", self.map_above_mb, "must be >= 0",
                   "Use e.g. 1024, or 0 to always memory-map."),
            _check(self.cutmix >= 0, "data.cutmix", self.cutmix, "must be >= 0", "Use e.g. 1.0, or 0 for off."),
            _check(self.batch_size >= 1, "data.batch_size", self.batch_size, "must be at least 1", "Use e.g. 32."),
            _check(_is_codec(self.encoding), "data.encoding", repr(self.encoding),
                   "must be a text encoding Python knows", "Use e.g. utf-8, latin-1 or cp1252."),
            _check(self.fold is None or self.fold >= 0, "data.fold", self.fold, "must be >= 0 or null",
                   "Leave it null: model selection sets it on its cross-validation runs."),
        ])


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule."""

    lr: float = 5.0e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    """Fraction of the trial's full budget (scheduler.max_epochs) spent warming up linearly."""
    schedule: Schedule = Schedule.linear
    min_lr_ratio: float = 0.0
    """Where the decay ends, as a fraction of lr: cosine_with_min_lr, cosine_warmup_with_min_lr,
    warmup_stable_decay and polynomial."""
    num_cycles: int = 1
    """cosine_with_restarts: cosine cycles (hard restarts) over the budget."""
    decay_ratio: float = 0.1
    """warmup_stable_decay: fraction of the budget spent decaying at the end."""
    l1: float = 0.0
    """L1 penalty on the trainable weights: l1 * sum |w| added to the training loss; 0 = off."""

    def __post_init__(self) -> None:
        if _incomplete(self):
            return  # a schema default, not yet filled in by YAML
        wsd = self.schedule is Schedule.warmup_stable_decay
        _raise_problems([
            _check(self.lr > 0, "optim.lr", self.lr, "must be > 0", "Use e.g. 5e-5."),
            _check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay,
                   "must be >= 0", "Use e.g. 0.01."),
            _check(0.0 <= self.warmup_ratio < 1.0, "optim.warmup_ratio", self.warmup_ratio,
                   "must be in [0, 1)", "Use e.g. 0.1."),
            _check(0.0 <= self.min_lr_ratio < 1.0, "optim.min_lr_ratio", self.min_lr_ratio,
                   "must be in [0, 1)", "Use e.g. 0.1, or 0 to decay to zero."),
            _check(self.l1 >= 0, "optim.l1", self.l1, "must be >= 0", "Use e.g. 1e-6, or 0 for off."),
            _check(self.num_cycles >= 1, "optim.num_cycles", self.num_cycles, "must be at least 1", "Use e.g. 2."),
            _check(0.0 < self.decay_ratio <= 1.0, "optim.decay_ratio", self.decay_ratio,
                   "must be in (0, 1]", "Use e.g. 0.1."),
            _check(not wsd or self.warmup_ratio + self.decay_ratio <= 1.0, "optim.warmup_ratio",
                   self.warmup_ratio + self.decay_ratio,
                   "plus optim.decay_ratio must fit in the budget (sum <= 1) for warmup_stable_decay",
                   "Lower one of them."),
        ])


@dataclass
class TrainerConfig:
    """The Lightning Trainer of every trial."""

    precision: Precision = Precision["auto"]
    """auto: bf16 mixed where the hardware computes in bf16 (CUDA GPUs with bf16, CPUs with AVX512-BF16 or
    AMX), fp16 mixed on older GPUs, 32-true otherwise; or any Lightning value (32-true, bf16-mixed, ...)."""
    gradient_clip_val: Optional[float] = None
    accelerator: Accelerator = Accelerator.auto
    seed: int = 0
    """Seed of weight init and batch order, the same for every trial so only hyperparameters differ."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing (classification only)."""
    accumulate_grad_batches: int = 1
    """Batches per optimiser step."""
    early_stopping_patience: Optional[int] = None
    """Stop a trial after this many reports (epochs, or ``scheduler.report_every`` steps) without improving the
    objective; null = off."""
    val_fraction_per_report: float = 1.0
    """Share of the validation split (its first rows) scored at each report; model selection scores all of it."""

    def __post_init__(self) -> None:
        _raise_problems([
            _check(self.gradient_clip_val is None or self.gradient_clip_val > 0,
                   "trainer.gradient_clip_val", self.gradient_clip_val, "must be > 0 or null",
                   "Use null to turn clipping off."),
            _check(0.0 <= self.label_smoothing < 1.0, "trainer.label_smoothing", self.label_smoothing,
                   "must be in [0, 1)", "Use e.g. 0.1."),
            _check(self.accumulate_grad_batches >= 1, "trainer.accumulate_grad_batches",
                   self.accumulate_grad_batches, "must be at least 1", "Use 1 to step every batch."),
            _check(0.0 < self.val_fraction_per_report <= 1.0, "trainer.val_fraction_per_report",
                   self.val_fraction_per_report, "must be in (0, 1]", "Use e.g. 0.25, or 1.0 for the whole split."),
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
    """Names of the linear layers that get adapters (BERT: query, key, value, dense); ``[auto]`` = peft's
    defaults for the architecture (Llama, Qwen, Mistral: q_proj, v_proj; GPT-2: c_attn; T5: q, v ...)."""

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
    l2sp: float = 0.0
    """L2-SP (Li et al., 2018): l2sp / 2 * ||w - w_pretrained||^2 over the trainable backbone weights (not the
    head) added to the training loss, pulling towards what the model knew rather than towards zero; 0 = off."""
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        _raise_problems([
            _check(self.freeze_layers >= 0, "finetune.freeze_layers", self.freeze_layers, "must be >= 0",
                   "Use e.g. 2."),
            _check(self.unfreeze_every >= 1, "finetune.unfreeze_every", self.unfreeze_every,
                   "must be at least 1", "Use e.g. 1."),
            _check(0.0 < self.llrd <= 1.0, "finetune.llrd", self.llrd, "must be in (0, 1]",
                   "Use e.g. 0.8, or 1.0 for off."),
            _check(self.l2sp >= 0, "finetune.l2sp", self.l2sp, "must be >= 0", "Use e.g. 0.01, or 0 for off."),
            _check(self.head_lr_mult > 0, "finetune.head_lr_mult", self.head_lr_mult, "must be > 0",
                   "Use e.g. 1.0."),
        ])


AUTO_CV_BELOW = 200
"""``final.cv_folds: auto`` cross-validates when the validation split has fewer rows than this: below it one
example moves accuracy by more than half a point, and a ranking on it is mostly noise."""

KNEE = "knee"
"""``final.select: knee``: the winner is the knee of the feasible Pareto front (``search.pareto.knee``)."""

AUTO_CV_FOLDS = 5
"""Folds ``final.cv_folds: auto`` uses when it turns cross-validation on."""


@dataclass
class FinalConfig:
    """Model selection after the search."""

    top_k: int = 1
    """Configurations of the search that go on to model selection (the finalists, beside the recipe)."""
    seeds: int = 0
    """Fresh seeds per finalist (per fold with cv_folds); the winner is the best mean. 0 = no re-training."""
    baseline: bool = False
    """Also train the config without any searched value once after the search (never ranked): the gain."""
    cv_folds: Any = 0
    """K: re-train the finalists and the recipe on K stratified folds of train + validation (test never enters)
    and rank them by their mean over folds; 0 = off; auto = 5 folds when the validation split has fewer than
    200 rows, else off."""
    generate_samples: int = 8
    """Generative tasks: validation prompts (a fixed, seeded sample) the winner generates for, scored and logged
    as a table of prompt, reference and generation."""
    prefer: Prefer = Prefer.winner
    """winner: register the best-ranked configuration; recipe_unless_better: register the recipe unless the
    winner beats it beyond noise. The verdict is printed either way."""
    select: Any = None
    """A multi-objective sweep's winner among the feasible Pareto front: ``{metric: val/accuracy}`` (the best by
    that objective), ``knee`` (the front's knee point), or null = the best by the primary (first) objective."""

    def __post_init__(self) -> None:
        auto = self.cv_folds == "auto"
        whole = isinstance(self.cv_folds, int) and not isinstance(self.cv_folds, bool)
        _raise_problems([
            _check(self.top_k >= 1, "final.top_k", self.top_k, "must be at least 1", "Use e.g. 3."),
            _check(self.generate_samples >= 0, "final.generate_samples", self.generate_samples, "must be >= 0",
                   "Use e.g. 8, or 0 for none."),
            _check(self.seeds >= 0, "final.seeds", self.seeds, "must be >= 0", "Use 0 to skip re-training."),
            _check(auto or (whole and (self.cv_folds == 0 or self.cv_folds >= 2)), "final.cv_folds",
                   repr(self.cv_folds), "must be 0 (off), a number of folds >= 2, or auto", "Use e.g. 5 or auto."),
            _check(self.select in (None, KNEE) or isinstance(self.select_metric, str), "final.select",
                   repr(self.select), "must be {metric: NAME}, knee or null", "Write e.g. {metric: val/accuracy}."),
        ])

    @property
    def select_metric(self) -> Optional[str]:
        """The objective ``final.select`` ranks the front by (None: the primary objective, or the knee)."""
        if isinstance(self.select, dict) or hasattr(self.select, "get"):
            found = self.select.get("metric")
            return str(found) if isinstance(found, str) else None
        return self.select if isinstance(self.select, str) and self.select != KNEE else None

    @property
    def knee(self) -> bool:
        """Whether the winner is the Pareto front's knee point."""
        return bool(self.select == KNEE)

    def folds(self, val_rows: int) -> int:
        """The folds model selection uses (0 = none) for a validation split of ``val_rows`` rows."""
        if self.cv_folds == "auto":
            return AUTO_CV_FOLDS if val_rows < AUTO_CV_BELOW else 0
        return int(self.cv_folds)

    @property
    def retrains(self) -> bool:
        """Whether model selection may re-train the finalists (seeds, or folds: auto may decide either way)."""
        return self.seeds > 0 or self.cv_folds != 0


@dataclass
class TrackingConfig:
    """Where MLflow records the sweep."""

    uri: str = MISSING
    """MLflow tracking URI: sqlite:///abs/path.db, http://host:port, ..."""
    artifact_root: str = ""
    """Artifact location of experiments this sweep creates (absolute path or URI); empty = the store's own:
    ``artifacts/`` beside a SQLite file, or what an MLflow server serves (``--serve-artifacts``)."""
    experiment: str = ""
    """MLflow experiment name; empty = the sweep name."""
    optuna_storage: str = ""
    """Optuna RDB storage the study is kept in (optuna-dashboard URL); empty = optuna.db in cluster.storage_path."""
    registered_model: str = ""
    """Model Registry name the winner is registered under; empty = the sweep name."""
    flush_timeout: float = 30.0
    """Seconds the driver waits at the end for MLflow to take the sweep's last events; what it does not
    take stays in the sweep's log for ``finesweep sync``."""

    def __post_init__(self) -> None:
        _raise_problems([
            _check(self.flush_timeout >= 0, "tracking.flush_timeout", self.flush_timeout, "must be >= 0",
                   "Use e.g. 30."),
        ])


@dataclass
class ClusterConfig:
    """Where Ray runs the trials."""

    address: str = ""
    """Address of an existing Ray cluster ('auto' or HEAD:6379); empty = start a local Ray."""
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    storage_path: str = MISSING
    """Folder of the sweep's log and trial checkpoints; a shared file system (NFS, EFS) on several nodes."""
    log_dir: str = MISSING
    """Where finesweep writes Ray's own log output."""
    py_modules: List[str] = field(default_factory=list)
    """Local package folders of your own that workers import, shipped to every node (finesweep ships itself)."""
    keep_checkpoints: int = 3
    """Checkpoints kept of finished search trials: the best ones; the others are deleted once they cannot win."""
    workers_per_trial: int = 1
    """Processes (devices) one trial trains on: above 1, each trial is a Ray Train run of that many workers."""
    strategy: Parallelism = Parallelism.ddp
    """How a trial of several workers splits its training: ddp (replicas) or fsdp (sharded weights)."""
    placement: Placement = Placement.pack
    """Where one trial's workers go: pack (few nodes) or spread (different nodes where possible)."""
    cpus_per_worker: Optional[float] = None
    """CPUs each worker of a trial reserves; null = cpus_per_trial (with one worker the two are the same)."""
    gpus_per_worker: Optional[float] = None
    """GPUs each worker of a trial reserves; null = gpus_per_trial."""

    @property
    def worker_cpus(self) -> float:
        """CPUs one worker of a trial reserves."""
        return self.cpus_per_trial if self.cpus_per_worker is None else self.cpus_per_worker

    @property
    def worker_gpus(self) -> float:
        """GPUs one worker of a trial reserves (a one-worker trial: ``gpus_per_trial``)."""
        return self.gpus_per_trial if self.gpus_per_worker is None else self.gpus_per_worker

    @property
    def distributed(self) -> bool:
        """Whether each trial is a Ray Train run of several workers."""
        return self.workers_per_trial > 1

    def __post_init__(self) -> None:
        _raise_problems([
            _check("://" not in self.storage_path, "cluster.storage_path", self.storage_path,
                   "must be a folder: the sweep's log is appended to and locked, which object stores cannot do",
                   "Use a folder of a file system every node mounts (NFS, EFS, Filestore)."),
            _check(self.keep_checkpoints >= 1, "cluster.keep_checkpoints", self.keep_checkpoints,
                   "must be at least 1 (the winner's)", "Use e.g. 3."),
            _check(self.cpus_per_trial > 0, "cluster.cpus_per_trial", self.cpus_per_trial,
                   "must be > 0", "Use e.g. 1."),
            _check(self.gpus_per_trial >= 0, "cluster.gpus_per_trial", self.gpus_per_trial,
                   "must be >= 0", "Use 0 on CPU-only machines."),
            _check(self.workers_per_trial >= 1, "cluster.workers_per_trial", self.workers_per_trial,
                   "must be at least 1", "Use 1 (one device per trial), or e.g. 4 to span four GPUs."),
            _check(self.cpus_per_worker is None or self.cpus_per_worker > 0, "cluster.cpus_per_worker",
                   self.cpus_per_worker, "must be > 0", "Use e.g. 1, or null for cluster.cpus_per_trial."),
            _check(self.gpus_per_worker is None or self.gpus_per_worker >= 0, "cluster.gpus_per_worker",
                   self.gpus_per_worker, "must be >= 0", "Use e.g. 1, or null for cluster.gpus_per_trial."),
            _check(self.gpus_per_worker is None or self.workers_per_trial > 1 or self.gpus_per_trial == 0
                   or self.gpus_per_worker == self.gpus_per_trial, "cluster.gpus_per_worker", self.gpus_per_worker,
                   f"disagrees with cluster.gpus_per_trial={self.gpus_per_trial:g}, and a one-worker trial has one "
                   "worker", "Set only one of them."),
            _check(not (self.workers_per_trial > 1 and 0 < self.worker_gpus < 1), "cluster.gpus_per_worker",
                   self.worker_gpus, "must be a whole number of GPUs when a trial spans several workers (NCCL "
                   "gives each worker its own device)", "Use 1, or cluster.workers_per_trial=1 to share a GPU."),
        ])


@dataclass
class ProbeConfig:
    """Checks of what fine-tuning does to the pretrained model besides the task."""

    forgetting: Optional[str] = None
    """A plain-text file of general text: the base model's perplexity on it, and each trial's at its best
    checkpoint (``probe/perplexity``, ``probe/perplexity_increase``); null = off."""
    max_tokens: int = 8192
    """Tokens of the probe file scored (its first ones): keeps the probe a few seconds per best checkpoint."""

    def __post_init__(self) -> None:
        if self.forgetting:
            self.forgetting = str(Path(self.forgetting).expanduser().resolve())
        _raise_problems([
            _check(self.max_tokens >= 16, "probe.max_tokens", self.max_tokens, "must be at least 16",
                   "Use e.g. 8192."),
        ])


@dataclass
class ObjectiveTerm:
    """One more objective of a multi-objective sweep: a metric and whether it is maximised or minimised."""

    metric: str = MISSING
    mode: Mode = MISSING


@dataclass
class Bound:
    """A constraint on one metric: the values a trial may have (either end may be open)."""

    min: Optional[float] = None
    max: Optional[float] = None

    @property
    def interval(self) -> Tuple[Optional[float], Optional[float]]:
        """(low, high); None = open."""
        return self.min, self.max


@dataclass
class ObjectiveConfig:
    """What the search optimises, declared only in the sweep file: one metric, or several (a Pareto front), and
    constraints a trial must meet to be selected. Metric names are checked against what the tasks report
    (``preflight.check_objective``): the schema does not know the tasks.

    The sweep file writes ``objective: {metric, mode}`` or a list of them (``compose.objective_section`` turns a
    list into the first as ``metric``/``mode`` and the rest as ``also``). The first objective is the primary one:
    it picks each trial's best epoch (the checkpoint that trial stands for) and, by default, the winner.
    """

    metric: str = MISSING
    mode: Mode = MISSING
    also: List[ObjectiveTerm] = field(default_factory=list)
    """The further objectives of a multi-objective sweep, e.g. ``{metric: inference/latency_ms, mode: min}``."""
    constraints: Dict[str, Bound] = field(default_factory=dict)
    """metric -> ``{max: ...}`` and/or ``{min: ...}``: a trial outside them is never selected (and is stopped at
    its first report with ``scheduler.stop_infeasible``)."""

    @property
    def terms(self) -> List[Tuple[str, Mode]]:
        """Every objective as (metric, mode), the primary first."""
        return [(self.metric, self.mode), *((t.metric, t.mode) for t in self.also)]

    @property
    def metrics(self) -> List[str]:
        """Every objective's metric, the primary first."""
        return [metric for metric, _ in self.terms]

    @property
    def multi(self) -> bool:
        """Whether the sweep optimises several objectives (a Pareto front)."""
        return bool(self.also)

    @property
    def bounds(self) -> Dict[str, Tuple[Optional[float], Optional[float]]]:
        """Each constrained metric's (low, high), None = open."""
        return {metric: bound.interval for metric, bound in self.constraints.items()}

    @property
    def watched(self) -> List[str]:
        """Every metric the search reads: the objectives', then the constrained ones."""
        return list(dict.fromkeys([*self.metrics, *self.constraints]))

    def __post_init__(self) -> None:
        if _incomplete(self):
            return  # a schema default, not yet filled in by YAML
        metrics = self.metrics
        _raise_problems([
            _check(len(set(metrics)) == len(metrics), "objective", metrics, "names a metric twice",
                   "List each metric once."),
            *[_check(bound.min is not None or bound.max is not None, f"objective.constraints.{metric}", "{}",
                     "must set max, min or both", f"Write e.g. {metric}: {{max: 5.0}}.")
              for metric, bound in self.constraints.items()],
            *[_check(bound.min is None or bound.max is None or bound.min <= bound.max,
                     f"objective.constraints.{metric}", f"min={bound.min}, max={bound.max}",
                     "must have min <= max", "Swap or widen the bounds.")
              for metric, bound in self.constraints.items()],
        ])


@dataclass
class SearchConfig:
    """How many trials, proposed by which Optuna sampler."""

    sampler: Sampler = Sampler.auto
    """``auto``: a Gaussian process on a flat space with one objective, else TPE (``config/sampler_choice.py``)."""
    num_trials: Optional[int] = None
    """Trials to run; a grid runs every combination once and may leave this null."""
    max_concurrent: int = 1
    seed: int = 0
    max_retries: int = 0
    """Times a failed trial is run again from its last checkpoint (never after a NaN loss)."""
    start_from_config: bool = True
    """Run the composed config's own values of the searched keys (the recipe) as the first trial, so the search
    can never report a winner worse than the recipe on its own split, and the sampler learns from it."""
    enqueue: List[Dict[str, Any]] = field(default_factory=list)
    """More known configurations to run first (after the recipe): ``[{optim.lr: 3.0e-5, ...}, ...]``; a
    searched key a point leaves out is proposed by the sampler."""
    prior: PriorSource = PriorSource.none
    """``config``: each searched key's value in the composed config is the mode of TPE's prior belief about it
    (πBO's weighting, fading as trials come in; ``search/prior.py``). A space entry's own ``prior:`` wins."""

    def __post_init__(self) -> None:
        _raise_problems([
            _check(self.num_trials is None or self.num_trials >= 1, "search.num_trials",
                   self.num_trials, "must be at least 1", "Use e.g. 16."),
            _check(self.max_concurrent >= 1, "search.max_concurrent", self.max_concurrent,
                   "must be at least 1", "Use the number of trials that fit on your machine."),
            _check(self.max_retries >= 0, "search.max_retries", self.max_retries, "must be >= 0",
                   "Use 0 to never retry."),
        ])


@dataclass
class SchedulerConfig:
    """Early termination, in ``unit``: epochs (a trial reports once per epoch) or optimiser steps (a trial
    validates and reports every ``report_every`` steps, mid-epoch too)."""

    kind: SchedulerKind = SchedulerKind.asha
    unit: Unit = Unit.epochs
    max_epochs: int = 3
    """Full budget of a trial in epochs (``unit: epochs``); ASHA's max_t and the span of the lr schedule."""
    max_steps: Optional[int] = None
    """Full budget of a trial in optimiser steps (``unit: steps``, required there); ASHA's max_t and the span
    of the lr schedule."""
    report_every: Optional[int] = None
    """``unit: steps``: optimiser steps between two validations and reports (required there); ``max_steps`` is
    a multiple of it."""
    grace_period: int = 1
    """Epochs (or steps) every trial runs before ASHA may stop it."""
    reduction_factor: float = 2.0
    stop_infeasible: bool = False
    """Stop a trial at the first report that breaks one of ``objective.constraints`` (it can never be selected)."""

    def __post_init__(self) -> None:
        steps = self.unit is Unit.steps
        every = self.report_every or 0
        budget = "max_steps" if steps else "max_epochs"
        _raise_problems([
            _check(self.max_epochs >= 1, "scheduler.max_epochs", self.max_epochs,
                   "must be at least 1", "Use e.g. 3."),
            _check(not steps or (self.max_steps or 0) >= 1, "scheduler.max_steps", self.max_steps,
                   "must be at least 1 with scheduler.unit=steps", "Set the trial's budget, e.g. 200."),
            _check(not steps or every >= 1, "scheduler.report_every", self.report_every,
                   "must be at least 1 with scheduler.unit=steps", "Set the steps between reports, e.g. 20."),
            _check(not steps or every < 1 or (self.max_steps or 0) % every == 0, "scheduler.max_steps",
                   self.max_steps, f"must be a multiple of scheduler.report_every ({self.report_every})",
                   "Make the budget a whole number of reports."),
            _check(1 <= self.grace_period <= self.budget, "scheduler.grace_period",
                   self.grace_period, f"must be between 1 and scheduler.{budget} ({self.budget})",
                   f"Lower grace_period or raise {budget}."),
            _check(self.reduction_factor >= 2, "scheduler.reduction_factor",
                   self.reduction_factor, "must be >= 2", "Use 2, 3 or 4."),
        ])

    @property
    def budget(self) -> int:
        """A trial's full budget in ``unit``: ``max_steps`` or ``max_epochs``."""
        return int(self.max_steps or 0) if self.unit is Unit.steps else self.max_epochs

    @property
    def time_attr(self) -> str:
        """The key of a trial's reports ASHA counts: ``epoch`` or ``step``."""
        return self.unit.key


BATCH_FACTORS = ("data.batch_size", "cluster.workers_per_trial", "trainer.accumulate_grad_batches")
"""The keys whose product is the examples of one optimiser step (``ExperimentConfig.effective_batch``)."""


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
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    space: Dict[str, Any] = field(default_factory=dict)
    """Search space: dotted config key -> distribution (see config/space.py)."""
    name: str = ""
    """The sweep's name, set by the CLI from the sweep file name."""

    @property
    def effective_batch(self) -> int:
        """Examples per optimiser step: ``data.batch_size`` per device x ``cluster.workers_per_trial`` x
        ``trainer.accumulate_grad_batches``."""
        return self.effective_batch_with({})

    def effective_batch_with(self, params: Dict[str, Any]) -> int:
        """``effective_batch`` of a trial whose sampled ``params`` (dotted keys) may set any of its factors."""
        own = (self.data.batch_size, self.cluster.workers_per_trial, self.trainer.accumulate_grad_batches)
        product = 1
        for key, value in zip(BATCH_FACTORS, own, strict=True):
            product *= int(params.get(key, value))
        return product

    def __post_init__(self) -> None:
        if _incomplete(self.objective):
            return  # the schema's default instance; the composed config always has an objective
        wants_gpu = self.trainer.accelerator in (Accelerator.gpu, Accelerator.cuda)
        _raise_problems([
            _check(self.search.sampler is Sampler.grid or self.search.num_trials is not None, "search.num_trials",
                   self.search.num_trials, f"is required for sampler {self.search.sampler.value}",
                   "Set search.num_trials, e.g. 16."),
            # Ray hides every GPU from a trial that asked for none, so each such trial would fail in Lightning.
            _check(not wants_gpu or self.cluster.worker_gpus > 0, "trainer.accelerator",
                   self.trainer.accelerator.value, "needs cluster.gpus_per_trial > 0 (Ray shows a trial only "
                   "the GPUs it reserved)", "Set cluster.gpus_per_trial=1, or trainer.accelerator=auto."),
            # bitsandbytes' 4-bit kernels are CUDA's: a CPU trial would crash loading the model.
            _check(not self.model.load_in_4bit or self.cluster.worker_gpus > 0, "model.load_in_4bit",
                   self.model.load_in_4bit, "needs a CUDA GPU per trial (bitsandbytes' 4-bit weights), but "
                   "cluster.gpus_per_trial=0", "Set cluster.gpus_per_trial=1 on a GPU machine, or "
                   "model.load_in_4bit=false on CPU."),
            # Under FSDP no worker holds the whole model: what runs on one process's full copy cannot run.
            *[_check(not (sharded and on), key, value, "runs the whole model in one process, which a sharded "
                     "(cluster.strategy=fsdp) trial has on no worker", f"Use cluster.strategy=ddp, or {fix}.")
              for sharded in (self.cluster.distributed and self.cluster.strategy is Parallelism.fsdp,)
              for key, value, on, fix in (
                  ("probe.forgetting", self.probe.forgetting, bool(self.probe.forgetting), "probe.forgetting=null"),
                  ("data.generate_every_epoch", self.data.generate_every_epoch, self.data.generate_every_epoch,
                   "data.generate_every_epoch=false (the winner's generations are still scored after the search)"),
                  ("model.load_in_4bit", self.model.load_in_4bit, self.model.load_in_4bit,
                   "model.load_in_4bit=false"))],
            *self._objective_problems(),
            _check(not self.model.load_in_4bit or self.finetune.strategy is Strategy.lora
                   or "finetune.strategy" in self.space, "model.load_in_4bit", self.model.load_in_4bit,
                   f"trains LoRA adapters over frozen 4-bit weights (QLoRA), but finetune.strategy="
                   f"{self.finetune.strategy.value}", "Set finetune.strategy=lora."),
        ])

    def _objective_problems(self) -> List[Optional[str]]:
        """The rules between the objective and the search, scheduler and selection that read it."""
        objective, grid = self.objective, self.search.sampler is Sampler.grid
        select = self.final.select_metric
        return [
            _check(not (grid and objective.multi), "search.sampler", "grid",
                   f"cannot search {len(objective.terms)} objectives: a grid runs every combination once whatever "
                   "they score, so it has no front to move towards", "Use search.sampler=nsga2, tpe or random."),
            _check(not (grid and objective.constraints), "search.sampler", "grid",
                   "cannot honour objective.constraints (a grid runs every combination once)",
                   "Use search.sampler=tpe, nsga2 or random, or drop the constraints."),
            _check(not self.scheduler.stop_infeasible or bool(objective.constraints), "scheduler.stop_infeasible",
                   True, "needs objective.constraints to know what is infeasible",
                   "Add e.g. objective.constraints: {inference/latency_ms: {max: 5.0}}, or set it false."),
            _check(select is None or select in objective.metrics, "final.select", repr(self.final.select),
                   f"must name one of the objectives ({', '.join(objective.metrics)})",
                   f"Write e.g. final.select: {{metric: {objective.metric}}}, or knee."),
            _check(not self.final.knee or objective.multi, "final.select", "knee",
                   "needs several objectives (a front has a knee; one objective has a best)",
                   "Add an objective, or leave final.select null."),
        ]

    @property
    def experiment_name(self) -> str:
        """MLflow experiment: ``tracking.experiment`` or the sweep name."""
        return self.tracking.experiment or self.name

    @property
    def registered_model_name(self) -> str:
        """Model Registry name: ``tracking.registered_model`` or the sweep name."""
        return self.tracking.registered_model or self.name


def _is_codec(name: str) -> bool:
    try:
        return codecs.lookup(name) is not None
    except LookupError:
        return False


def _incomplete(section: Any) -> bool:
    return any(getattr(section, f.name) == MISSING for f in dataclasses.fields(section))


def _check(ok: bool, key: str, value: Any, rule: str, fix: str) -> Optional[str]:
    return None if ok else f"{key} {rule}, got {value}. {fix}"


def _raise_problems(problems: List[Optional[str]]) -> None:
    found = [p for p in problems if p]
    if found:
        raise ConfigError("; ".join(found))
