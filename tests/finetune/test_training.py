"""The shared training loop on a tiny BERT: schedule, once-per-epoch reports, best-epoch weights."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional, Tuple

import pytest
import torch
from safetensors.torch import load_file

from finesweep.config import ExperimentConfig, Mode, OptimConfig, Schedule
from finesweep.execution.trial import fit
from finesweep.finetune.callbacks import EpochReport
from finesweep.finetune.datamodule import PreparedDataModule
from finesweep.finetune.layout import BEST, STATE
from finesweep.finetune.module import FinetuneModule, make_schedule
from finesweep.tasks.preparation import prepare_all

from .conftest import module_for, prepared

MakeConfig = Callable[..., ExperimentConfig]


@pytest.fixture()
def config(make_config: MakeConfig) -> ExperimentConfig:
    return make_config()


# 20 optimiser steps, warmup 10% = 2 steps, min_lr_ratio 0.1, 2 cosine cycles, decay over the last 25% = 5 steps.
# Each schedule below is written out by hand from its definition, independently of the code under test.
TOTAL, WARMUP, FLOOR, CYCLES, DECAY = 20, 2, 0.1, 2, 5


def _warm(step: int) -> float:
    return step / WARMUP


def _progress(step: int) -> float:
    return (step - WARMUP) / (TOTAL - WARMUP)


def _wsd(step: int) -> float:
    if step < WARMUP:
        return FLOOR + (1 - FLOOR) * step / WARMUP
    stable_end = TOTAL - DECAY
    if step < stable_end:
        return 1.0
    if step < TOTAL:
        return FLOOR + (1 - FLOOR) * 0.5 * (1 + math.cos(math.pi * (step - stable_end) / DECAY))
    return FLOOR


EXPECTED = {
    Schedule.linear: lambda s: _warm(s) if s < WARMUP else max(0.0, 1 - _progress(s)),
    Schedule.cosine: lambda s: _warm(s) if s < WARMUP else 0.5 * (1 + math.cos(math.pi * _progress(s))),
    Schedule.cosine_with_restarts: lambda s: _warm(s) if s < WARMUP else (
        0.0 if _progress(s) >= 1 else 0.5 * (1 + math.cos(math.pi * ((CYCLES * _progress(s)) % 1)))),
    Schedule.polynomial: lambda s: _warm(s) if s < WARMUP else (1 - FLOOR) * (1 - _progress(s)) + FLOOR,
    Schedule.constant: lambda s: 1.0,
    Schedule.constant_with_warmup: lambda s: _warm(s) if s < WARMUP else 1.0,
    Schedule.inverse_sqrt: lambda s: _warm(s) if s < WARMUP else 1 / math.sqrt(s / WARMUP),
    Schedule.cosine_with_min_lr: lambda s: _warm(s) if s < WARMUP else (
        FLOOR + (1 - FLOOR) * 0.5 * (1 + math.cos(math.pi * _progress(s)))),
    Schedule.cosine_warmup_with_min_lr: lambda s: (s + 1) / WARMUP if s < WARMUP else (
        FLOOR + (1 - FLOOR) * 0.5 * (1 + math.cos(math.pi * (s - WARMUP + 1) / (TOTAL - WARMUP)))),
    Schedule.warmup_stable_decay: _wsd,
}
STEPS = (0, 1, 2, 5, 8, 11, 14, 16, 17, 19)


def test_every_schedule_is_told_apart_by_the_probed_steps() -> None:
    assert set(EXPECTED) == set(Schedule), "every schedule has a hand-written expectation"
    curves = {s: [round(EXPECTED[s](step), 6) for step in STEPS] for s in Schedule}
    assert len(set(map(tuple, curves.values()))) == len(curves), "two schedules agree on every probed step"


@pytest.mark.parametrize("schedule", list(Schedule), ids=[s.value for s in Schedule])
def test_warmup_then_decay_spans_the_full_budget(schedule: Schedule) -> None:
    optim = OptimConfig(lr=1.0, warmup_ratio=WARMUP / TOTAL, schedule=schedule, min_lr_ratio=FLOOR,
                        num_cycles=CYCLES, decay_ratio=DECAY / TOTAL)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=optim.lr)
    scheduler = make_schedule(optimizer, optim, TOTAL)
    seen = {}
    for step in range(TOTAL):
        seen[step] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    for step in STEPS:
        assert seen[step] == pytest.approx(EXPECTED[schedule](step), abs=1e-9), f"step {step}"


def test_batches_are_trimmed_to_their_longest_example(config: ExperimentConfig) -> None:
    encoded = prepared(config)
    module = PreparedDataModule(encoded, batch_size=8, seed=0)
    batch = next(iter(module.val_dataloader()))
    lengths = batch["features"]["attention_mask"].sum(dim=1)
    assert batch["features"]["input_ids"].shape[1] == int(lengths.max()) < 32
    assert module.test_loads == 0


def test_fit_reports_every_epoch_and_saves_only_improvements(config: ExperimentConfig) -> None:
    cache = prepare_all(config, ())
    reports: List[Tuple[Dict[str, float], Optional[Dict[str, torch.Tensor]]]] = []

    def report(metrics: Dict[str, float], folder: Optional[Path]) -> None:
        assert folder is not None and (folder / STATE).is_file(), "every epoch leaves a state to continue from"
        assert (folder / BEST / "config.json").is_file()
        reports.append((metrics, load_file(str(folder / BEST / "model.safetensors"))))

    fit(config, cache, report)
    assert [m["epoch"] for m, _ in reports] == [1.0, 2.0, 3.0]
    assert all(set(m) == {"train/loss", "val/loss", "val/accuracy", "val/f1_macro", "model/trainable_params",
                          "model/trainable_fraction", "model/size_mb", "epoch"} for m, _ in reports)
    # the served size, once per trial in every report (no latency: this sweep neither optimises nor bounds it)
    assert all(m["model/size_mb"] == (21347 * 4 + 2 * 64 * 8) / 2**20 for m, _ in reports)  # + 2 int64 id buffers
    assert all(m["model/trainable_params"] == 21347 and m["model/trainable_fraction"] == 1.0 for m, _ in reports)
    assert all(isinstance(v, float) for m, _ in reports for v in m.values())
    best, previous = -1.0, None
    for metrics, weights in reports:
        improved = metrics["val/accuracy"] > best
        changed = previous is None or any(not torch.equal(weights[k], previous[k]) for k in weights)
        assert changed == improved, "the best weights change exactly when the objective improves"
        best, previous = max(best, metrics["val/accuracy"]), weights
    assert reports[-1][0]["train/loss"] < reports[0][0]["train/loss"] + 0.05


class _Saves:
    """Stands in for the LightningModule and its task: ``task.save_trained(export_model())`` writes which epoch's
    weights these are."""

    def __init__(self) -> None:
        self.epoch = 0
        self.task = self
        self.generated: List[Dict[str, str]] = []  # generated no text

    def export_model(self) -> "_Saves":
        return self

    def save_trained(self, model: "_Saves", folder: Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "weights.txt").write_text(f"epoch {model.epoch}")


@pytest.mark.parametrize("mode,values,saved", [
    (Mode.min, [0.7, 0.5, 0.6, 0.4, float("nan"), 0.45], [1, 2, 4]),
    (Mode.max, [0.7, 0.5, 0.8, 0.8, float("nan"), 0.9], [1, 3, 6]),
], ids=["min", "max"])
def test_epoch_report_saves_the_weights_of_each_improving_epoch(mode: Mode, values: List[float], saved: List[int],
                                                                 tmp_path: Path) -> None:
    reports: List[Tuple[int, Optional[str]]] = []

    def report(metrics: Dict[str, float], folder: Optional[Path]) -> None:
        assert folder is not None and (folder / STATE).read_text() == f"state after epoch {int(metrics['epoch'])}"
        reports.append((int(metrics["epoch"]), (folder / BEST / "weights.txt").read_text()))

    callback, module = EpochReport("val/loss", mode, report, tmp_path / "best"), _Saves()
    for epoch, value in enumerate(values):
        module.epoch = epoch + 1
        state = f"state after epoch {epoch + 1}"
        trainer = SimpleNamespace(callback_metrics={"val/loss": torch.tensor(value)}, current_epoch=epoch,
                                  save_checkpoint=lambda path, text=state: Path(path).write_text(text),
                                  strategy=None, is_global_zero=True)  # a one-process trial
        callback.on_train_epoch_end(trainer, module)  # type: ignore[arg-type]
    assert [epoch for epoch, _ in reports] == list(range(1, len(values) + 1)), "every epoch is reported once"
    # each checkpoint carries the weights of the last improving epoch
    expected = [max(e for e in saved if e <= epoch) for epoch in range(1, len(values) + 1)]
    assert [text for _, text in reports] == [f"epoch {e}" for e in expected]


def test_module_starts_in_train_mode(config: ExperimentConfig) -> None:
    module = module_for(config)
    assert module.model.training, "from_pretrained's eval mode would silently disable dropout"


def _reports(config: ExperimentConfig, seed: Optional[int] = None) -> Tuple[FinetuneModule, List[Dict[str, float]]]:
    reports: List[Dict[str, float]] = []
    module = fit(config, prepare_all(config, ()), lambda metrics, folder: reports.append(metrics), seed=seed)
    return module, reports


def test_schedule_counts_optimiser_steps_under_gradient_accumulation(make_config: MakeConfig) -> None:
    # 192 training rows = 12 batches of 16; accumulating 5 -> 3 optimiser steps an epoch (the last one partial)
    config = make_config("trainer.accumulate_grad_batches=5", "scheduler.max_epochs=2", "optim.schedule=linear")
    module, _ = _reports(config)
    assert module.total_steps == module.trainer.global_step == 6
    assert [g["lr"] for g in module.trainer.optimizers[0].param_groups] == [0.0] * 2, "decay ends with the budget"


@pytest.mark.parametrize("patience,epochs", [("null", 4), ("1", 2), ("2", 3)], ids=["off", "patience-1", "patience-2"])
def test_early_stopping_ends_a_trial_that_stops_improving(make_config: MakeConfig, patience: str, epochs: int) -> None:
    # lr 1e-9 cannot move val/accuracy: epoch 1 sets the best, and no later epoch beats it
    config = make_config("optim.lr=1e-9", f"trainer.early_stopping_patience={patience}", "scheduler.max_epochs=4")
    assert (config.objective.metric, config.objective.mode) == ("val/accuracy", Mode.max)
    _, reports = _reports(config)
    assert [m["epoch"] for m in reports] == [float(e) for e in range(1, epochs + 1)]
    assert len({m["val/accuracy"] for m in reports}) == 1


def test_early_stopping_may_watch_the_training_loss(make_config: MakeConfig) -> None:
    # train/loss exists only once the training epoch ends, after validation: checked there, it is found
    config = make_config("objective.metric=train/loss", "objective.mode=min", "trainer.early_stopping_patience=1",
                         "scheduler.max_epochs=2")
    _, reports = _reports(config)
    assert [m["epoch"] for m in reports] == [1.0, 2.0] and reports[1]["train/loss"] < reports[0]["train/loss"]


@pytest.mark.parametrize("dropout,hidden,classifier", [("0.3", 0.3, 0.3), ("null", 0.1, None)], ids=["set", "null"])
def test_model_dropout_reaches_the_loaded_model(make_config: MakeConfig, dropout: str, hidden: float,
                                                classifier: Optional[float]) -> None:
    config = make_config(f"model.dropout={dropout}")
    model = FinetuneModule.for_trial(config, prepared(config), total_steps=10).model
    assert (model.config.hidden_dropout_prob, model.config.classifier_dropout) == (hidden, classifier)
    assert model.config.attention_probs_dropout_prob == 0.1, "attention dropout keeps the pretrained value"
    assert model.bert.encoder.layer[0].output.dropout.p == hidden
    assert model.dropout.p == (hidden if classifier is None else classifier)


def test_label_smoothing_applies_to_the_training_loss(make_config: MakeConfig) -> None:
    config = make_config("trainer.label_smoothing=0.2")
    encoded = prepared(config)
    module = FinetuneModule.for_trial(config, encoded, total_steps=10).eval()  # no dropout: forwards repeat
    batch = next(iter(PreparedDataModule(encoded, batch_size=16, seed=0).train_dataloader()))
    with torch.no_grad():
        logits = module(batch["features"])
        with pytest.warns(UserWarning, match="self.log"):  # no Trainer attached to log to
            loss = module.training_step(batch, 0)
    smoothed = torch.nn.functional.cross_entropy(logits, batch["labels"], label_smoothing=0.2)
    assert torch.isclose(loss, smoothed, rtol=0, atol=1e-6)
    assert not torch.isclose(loss, torch.nn.functional.cross_entropy(logits, batch["labels"]), rtol=0, atol=1e-4)


def test_label_smoothing_leaves_the_validation_loss_comparable(make_config: MakeConfig) -> None:
    base = ("optim.lr=1e-9", "scheduler.max_epochs=1")
    _, plain = _reports(make_config(*base))
    _, smoothed = _reports(make_config(*base, "trainer.label_smoothing=0.2"))
    assert smoothed[0]["val/loss"] == pytest.approx(plain[0]["val/loss"], abs=1e-6)
    assert abs(smoothed[0]["train/loss"] - plain[0]["train/loss"]) > 1e-6, "the training loss is smoothed"


def test_fit_seed_overrides_the_configured_seed(make_config: MakeConfig) -> None:
    config = make_config("scheduler.max_epochs=1")
    _, default = _reports(config)
    _, same = _reports(config, seed=config.trainer.seed)
    _, fresh = _reports(config, seed=config.trainer.seed + 1)
    assert default[0]["train/loss"] == same[0]["train/loss"] != fresh[0]["train/loss"]


def test_parameter_counts_are_reported_exactly_above_float32_precision(make_config: MakeConfig,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # float32 holds integers exactly only up to 2^24; BERT-base trains 110M parameters
    monkeypatch.setattr(FinetuneModule, "trainable_counts", lambda self: (2 ** 24 + 1, 2 ** 25))
    _, reports = _reports(make_config("scheduler.max_epochs=1"))
    assert reports[0]["model/trainable_params"] == 16_777_217.0
    assert reports[0]["model/trainable_fraction"] == (2 ** 24 + 1) / 2 ** 25


def test_the_training_loss_adds_l1_and_l2sp_but_train_loss_stays_the_tasks(make_config: MakeConfig) -> None:
    from finesweep.finetune.regularisers import l1_penalty

    plain = module_for(make_config())
    assert plain.penalty() is None, "off by default: nothing is added"
    module = module_for(make_config("optim.l1=1e-3", "finetune.l2sp=0.5"))
    assert module.l2sp is not None and float(module.l2sp.penalty(module.model)) == 0.0, "at the pretrained weights"
    expected = l1_penalty(module.model, 1e-3)
    penalty = module.penalty()
    assert penalty is not None and float(penalty) == pytest.approx(float(expected))
    with torch.no_grad():
        next(p for n, p in module.model.named_parameters() if "encoder.layer.0" in n and p.dim() == 2).add_(0.1)
    moved = module.penalty()
    assert moved is not None and float(moved) > float(l1_penalty(module.model, 1e-3)), "L2-SP now adds its part"
