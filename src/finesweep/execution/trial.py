"""The trainable: plain resolved config + sampled values in -> data, module, Trainer -> fit -> report.

Runs inside a Ray worker. It never sees Hydra, never reads the data file and never tokenises: the driver
hands it the typed ``ExperimentConfig`` and the ``DataCache`` (prepared by the sweep's task, which comes with
it) through Ray's object store.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from finesweep.config import ExperimentConfig, Unit
from finesweep.config.overrides import with_overrides
from finesweep.finetune.layout import BEST, training_state
from finesweep.search.searcher import marker_of, params_of
from finesweep.tasks import DataCache, PreparedData
from finesweep.tasks.task import Generated

if TYPE_CHECKING:  # torch and Lightning load inside the worker, not when the driver imports this
    from finesweep.finetune.callbacks import Reporter
    from finesweep.finetune.datamodule import PreparedDataModule
    from finesweep.finetune.module import FinetuneModule
    from finesweep.finetune.parallel import Workers


def run_trial(config: Dict[str, Any], *, base: ExperimentConfig, cache: DataCache) -> None:
    """Ray Tune trainable: fine-tune one configuration, reporting once per epoch (or every ``report_every`` steps).

    A trial that goes on (resumed, retried) carries the checkpoint to continue from in its marker. The forgetting
    probe, when the sweep has one, came prepared with the data (``DataCache.probe``). A trial of several workers
    runs ``execution/distributed.py``'s trainable instead, whose workers each call ``fit``.
    """
    checkpoint = marker_of(config).get("checkpoint")
    trial_config = with_overrides(base, params_of(config))
    placement = {"device": device_name(trial_config), "precision": resolved_precision(trial_config)}
    probe = cache.probe
    fit(trial_config, cache, report=functools.partial(_tune_report, extra=placement),
        resume=Path(checkpoint) if checkpoint else None,
        probe=(lambda module: probe.measure(module.task, module.model)) if probe is not None else None)


def fit(config: ExperimentConfig, cache: DataCache, report: Reporter, seed: Optional[int] = None,
        resume: Optional[Path] = None, probe: Optional[Callable[[FinetuneModule], Dict[str, float]]] = None,
        workers: Optional[Workers] = None) -> FinetuneModule:
    """Fine-tune the model of ``config`` for its budget (``scheduler.max_epochs`` epochs or ``max_steps`` steps),
    unless stopped.

    Args:
        config: the trial's resolved config.
        cache: the tokenised data; the trial takes the variant prepared for ``config``.
        report: receives every report's metrics and its checkpoint folder (execution/checkpoints.py).
        seed: weight-init and batch-order seed; None = ``trainer.seed`` (re-training with fresh seeds
            passes its own).
        resume: a checkpoint folder this trial reported earlier: training continues after its report (mid-epoch
            by steps: with the next batch of the same shuffle), with its weights, optimiser, schedule, RNG and best
            weights, as if it had never stopped.
        probe: measures the best weights each time they improve (the forgetting probe); None = nothing.
        workers: this process's place in a trial of several workers (``execution/distributed.py``); None = a
            trial of one process.

    Returns:
        The trained module, as it stands after the last epoch.

    Raises:
        DivergedError: the training loss became NaN or infinite.
    """
    import lightning.pytorch as pl
    import torch

    from finesweep.finetune.callbacks import EpochReport, FiniteLoss, StepReport, early_stopping
    from finesweep.finetune.costs import LATENCY_METRIC, measure
    from finesweep.finetune.datamodule import PreparedDataModule
    from finesweep.finetune.module import FinetuneModule
    from finesweep.finetune.parallel import Workers

    _quiet()
    workers = workers or Workers()
    seed = config.trainer.seed if seed is None else seed
    torch.set_num_threads(max(1, int(config.cluster.worker_cpus)))
    pl.seed_everything(seed, verbose=False)
    data = cache.for_config(config)
    plan = StepPlan.of(config, len(data.train))
    module = FinetuneModule.for_trial(config, data, total_steps=plan.total_steps)
    report = _with_costs(report, measure(data.task, module.model, data, config.data.batch_size, _device(config),
                                         latency=LATENCY_METRIC in config.objective.watched))
    best_dir = Path(tempfile.mkdtemp(prefix="finesweep-best-"))
    try:
        if resume is not None and (resume / BEST).is_dir() and workers.writer:
            shutil.copytree(resume / BEST, best_dir, dirs_exist_ok=True)
        stepwise = config.scheduler.unit is Unit.steps
        reporting = (StepReport(config.objective.metric, config.objective.mode, report, best_dir, plan.steps_per_epoch,
                                probe=probe)
                     if stepwise else EpochReport(config.objective.metric, config.objective.mode, report, best_dir,
                                                  probe=probe))
        callbacks: List[pl.Callback] = [reporting, FiniteLoss()]
        if config.trainer.early_stopping_patience is not None:
            callbacks.append(early_stopping(config.objective.metric, config.objective.mode,
                                            config.trainer.early_stopping_patience, each_epoch=not stepwise))
        trainer = _trainer(config, max_epochs=config.scheduler.max_epochs, callbacks=callbacks, plan=plan,
                           workers=workers)
        batches = PreparedDataModule(data, config.data.batch_size, seed,
                                     transform=data.task.train_transform(config.data, data),
                                     val_rows=report_val_rows(config, len(data.val)),
                                     shard=(workers.rank, workers.world))
        state = training_state(str(resume)) if resume is not None else None
        if state is not None:
            batches.resume_at(*position_in_epoch(state))
        # weights_only: a checkpoint is data; loading one never runs code
        trainer.fit(module, datamodule=batches, ckpt_path=str(state) if state is not None else None, weights_only=True)
    finally:
        shutil.rmtree(best_dir, ignore_errors=True)
    return module


@dataclass(frozen=True)
class StepPlan:
    """How many optimiser steps a trial takes, and how the Trainer counts them.

    Lightning steps once per ``accumulate_grad_batches`` batches, and once more for an epoch's incomplete last
    group: 100 batches, accumulating 8 -> 13 steps per epoch. By steps (``scheduler.unit: steps``) an epoch is
    cut to whole groups instead (``train_batches``: 96 of the 100; the shuffle differs each epoch, so no example
    is always left out), which keeps a validation every ``report_every`` steps exactly
    ``report_every * accumulate`` batches apart.
    """

    steps_per_epoch: int
    total_steps: int
    """Optimiser steps in the trial's full budget: the span of the warmup/decay schedule."""
    train_batches: Optional[int] = None
    """Batches per epoch the Trainer takes (``limit_train_batches``); None = all."""

    @classmethod
    def of(cls, config: ExperimentConfig, train_examples: int) -> StepPlan:
        """The plan of a trial of ``config`` on ``train_examples`` training rows (shared by its workers: each takes
        its share, ``data.batch_size`` at a time)."""
        share = math.ceil(train_examples / config.cluster.workers_per_trial)
        batches = math.ceil(share / config.data.batch_size)
        accumulate = config.trainer.accumulate_grad_batches
        if config.scheduler.unit is Unit.epochs:
            per_epoch = math.ceil(batches / accumulate)
            return cls(per_epoch, per_epoch * config.scheduler.max_epochs)
        whole = max(1, batches // accumulate)
        return cls(whole, config.scheduler.budget, whole * accumulate if whole * accumulate < batches else None)


def optimiser_steps(config: ExperimentConfig, train_examples: int) -> int:
    """AdamW steps in the trial's full budget: the span of the warmup/decay schedule (``StepPlan``)."""
    return StepPlan.of(config, train_examples).total_steps


def report_val_rows(config: ExperimentConfig, val_rows: int) -> Optional[int]:
    """Validation rows scored at each report of a trial: the split's first ``trainer.val_fraction_per_report``,
    at most ``data.val_max_rows``; None = all of them. Model selection (``evaluate``) always scores all."""
    rows = val_rows if config.data.val_max_rows is None else min(val_rows, config.data.val_max_rows)
    rows = max(1, math.ceil(rows * config.trainer.val_fraction_per_report))
    return None if rows >= val_rows else rows


def position_in_epoch(state: Path) -> Tuple[int, int]:
    """Where a checkpoint of Lightning's training state stands: (its epoch, training examples already seen in it).

    A checkpoint taken at an epoch's end reads (next epoch, 0); one taken after a mid-epoch validation reads
    (that epoch, the examples of the batches before it, at the batch size and on the workers they had), which the
    resumed trial's shuffle skips.
    """
    import torch

    checkpoint = torch.load(state, map_location="cpu", weights_only=True)
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
    shape = checkpoint.get("PreparedDataModule", {})
    examples = int(progress["completed"]) * int(shape.get("batch_size", 0)) * int(shape.get("workers", 1))
    return int(checkpoint["epoch"]), examples


def evaluate(config: ExperimentConfig, data: PreparedData, weights_dir: Path, split: str,
             datamodule: Optional[PreparedDataModule] = None) -> Dict[str, float]:
    """Score saved weights on one split with the task's metrics.

    Args:
        config: the config the weights were trained with (batch size, precision, accelerator). Weights
            trained in mixed precision are scored in 32 bits, as they are served.
        data: the tokenised data; ``split="test"`` needs its test split.
        weights_dir: trained weights as ``EpochReport`` saves them (``task.save_trained``).
        split: "val" or "test".
        datamodule: serves the batches; pass your own to count ``test_loads`` (model selection
            must touch the test split once). None = a fresh one over ``data``.

    Returns:
        ``{split}/loss`` plus ``{split}/accuracy`` and ``{split}/f1_macro`` (classification) or
        ``{split}/rmse`` and ``{split}/pearson`` (regression).

    Raises:
        ValueError: an unknown split, or ``split="test"`` on data without a test split.
    """
    from finesweep.finetune.datamodule import PreparedDataModule
    from finesweep.finetune.module import FinetuneModule

    if split not in ("val", "test"):
        raise ValueError(f"evaluate: split must be 'val' or 'test', got {split!r}.")
    if split == "test" and data.test is None:
        raise ValueError("evaluate: split='test' needs data with its test split, got data.test=None "
                         "(what search trials receive). Pass the driver's full PreparedData.")
    _quiet()
    module = FinetuneModule.for_evaluation(config, data, weights_dir)
    if datamodule is None:
        datamodule = PreparedDataModule(data, config.data.batch_size, config.trainer.seed)
    trainer = _trainer(config, max_epochs=1, callbacks=[], precision=_serving_precision(config))
    run = trainer.test if split == "test" else trainer.validate
    results = run(module, datamodule=datamodule, verbose=False)
    return {name: float(value) for name, value in results[0].items()}


def breakdown(config: ExperimentConfig, data: PreparedData, weights_dir: Path) -> List[Dict[str, Any]]:
    """Saved weights' scores per class (or entity type) on the test split: the task's ``breakdown`` table.

    Raises:
        ValueError: ``data`` has no test split.
    """
    from finesweep.finetune.datamodule import PreparedDataModule
    from finesweep.finetune.module import FinetuneModule

    if data.test is None:
        raise ValueError("breakdown: needs data with its test split, got data.test=None. Pass the driver's data.")
    _quiet()
    module = FinetuneModule.for_evaluation(config, data, weights_dir)
    module.kept = []
    trainer = _trainer(config, max_epochs=1, callbacks=[], precision=_serving_precision(config))
    trainer.test(module, datamodule=PreparedDataModule(data, config.data.batch_size, config.trainer.seed),
                 verbose=False)
    return data.task.breakdown(module.kept, data)


def generations(config: ExperimentConfig, data: PreparedData, weights_dir: Path) -> Optional[Generated]:
    """Saved weights' generated text for ``final.generate_samples`` validation examples, scored against their
    references (``Task.generate``); None = the task does not generate, or no samples are asked for."""
    if config.final.generate_samples < 1:
        return None
    _quiet()
    model = data.task.load_trained(weights_dir, data).eval()
    return data.task.generate(model, data.val, data, config, config.final.generate_samples)


def _serving_precision(config: ExperimentConfig) -> str:
    # Mixed precision keeps 32-bit weights, and the served model computes in 32 bits: score it that way,
    # so the test score is the served model's. Weights trained in half precision (*-true) stay as trained.
    precision = resolved_precision(config)
    return "32-true" if precision.endswith("-mixed") else precision


def _trainer(config: ExperimentConfig, max_epochs: int, callbacks: List[Any], precision: Optional[str] = None,
             plan: Optional[StepPlan] = None, workers: Optional[Workers] = None) -> Any:
    import lightning.pytorch as pl

    from finesweep.finetune.parallel import Workers

    stepwise: Dict[str, Any] = {}
    if plan is not None and config.scheduler.unit is Unit.steps:
        # validate every report_every optimiser steps, counted across epochs, and stop at the budget
        every = int(config.scheduler.report_every or 1) * config.trainer.accumulate_grad_batches  # in batches
        stepwise = {"max_epochs": -1, "max_steps": plan.total_steps, "check_val_every_n_epoch": None,
                    "val_check_interval": every, "limit_train_batches": plan.train_batches or 1.0}
    return pl.Trainer(
        **({"max_epochs": max_epochs} | stepwise),
        accelerator=config.trainer.accelerator.value,
        **(workers or Workers()).trainer_arguments(),
        precision=precision or resolved_precision(config),  # type: ignore[arg-type]
        gradient_clip_val=config.trainer.gradient_clip_val,
        accumulate_grad_batches=config.trainer.accumulate_grad_batches,
        callbacks=callbacks,
        logger=False,  # the driver logs to MLflow; see finesweep.tracking
        enable_checkpointing=False,  # EpochReport keeps the best epoch's weights
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def resolved_precision(config: ExperimentConfig) -> str:
    """``trainer.precision``, with ``auto`` decided for the device this process has.

    On a CUDA GPU (the one Ray assigned: it sets CUDA_VISIBLE_DEVICES), bf16 mixed precision where
    the GPU supports it, else fp16 mixed; on a CPU with bf16 instructions (AVX512-BF16 or AMX) bf16 mixed
    (autocast: the weights, the optimiser and the saved model stay 32-bit), else 32-bit. Any other value
    is used as given.
    """
    if config.trainer.precision.value != "auto":
        return str(config.trainer.precision.value)
    import torch

    if config.trainer.accelerator.value != "cpu" and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_bf16() else "32-true"


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""CPU flags of native bf16 arithmetic; without them bf16 is converted in software and autocast does not pay."""


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes in bf16 natively (Linux reports it in /proc/cpuinfo; elsewhere: no)."""
    try:
        flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "").split()
    except OSError:
        return False
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def _with_costs(report: Reporter, costs: Dict[str, float]) -> Reporter:
    """``report`` with the trial's deployment costs (``finetune/costs.py``) added to every report."""
    def reporting(metrics: Dict[str, float], folder: Optional[Path]) -> None:
        report({**metrics, **costs}, folder)
    return reporting


def _device(config: ExperimentConfig) -> Any:
    """The torch device this process trains on (Ray shows a trial, or a worker, only its own GPU)."""
    import torch

    if config.trainer.accelerator.value != "cpu" and config.cluster.worker_gpus > 0 and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def device_name(config: ExperimentConfig) -> str:
    """What this trial computes on: ``cuda:0 (NVIDIA H100 ...)`` or ``cpu``."""
    import torch

    if config.trainer.accelerator.value != "cpu" and torch.cuda.is_available():
        return f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"
    return "cpu"


def _tune_report(metrics: Dict[str, float], checkpoint_dir: Optional[Path],
                 extra: Optional[Dict[str, str]] = None) -> None:
    from ray import tune

    checkpoint = tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
    tune.report({**metrics, **(extra or {})}, checkpoint=checkpoint)


def _quiet() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for pattern in (".*does not have many workers.*", ".*LightningModule.*", ".*TPU available.*",
                    ".*number of training batches.*"):
        warnings.filterwarnings("ignore", message=pattern)
