"""What serving a trial's model would cost: its latency per example and its size, measured once per trial.

A multi-objective sweep trades accuracy against these (``objective: [..., {metric: inference/latency_ms, mode:
min}]``) and constraints bound them (``objective.constraints``), so every trial measures them before it trains, and
every report of the trial carries them (ASHA ranks on them at each rung).

The method, stated once:

- ``inference/latency_ms``: milliseconds per example of one forward pass of the model as it would be served
  (LoRA adapters merged: the base model's compute), on the trial's device, in eval mode without gradients, over
  one batch of ``data.batch_size`` validation rows collated as the task collates them (text cut at
  ``data.max_length``, padded to the batch's longest row). ``WARMUP`` passes first (allocator, kernels, caches),
  then the fastest of ``TIMED`` passes, divided by the rows: as ``timeit`` advises, the slower passes measure the
  machine's other work (trials beside it share the cores), not the model. Generative tasks time the teacher-forced
  forward pass (one step of every position), not a whole generation.
- ``model/size_mb``: MiB of the served model's weights (parameters and buffers in their dtype); merged LoRA weighs
  what the full model weighs: the adapters are not counted twice.
- ``model/trainable_params`` is reported by the module every epoch (gradual unfreezing changes it).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Dict, Iterator

import torch
from torch import nn

from finesweep.tasks import PreparedData, Task

LATENCY_METRIC = "inference/latency_ms"
SIZE_METRIC = "model/size_mb"

WARMUP = 2
"""Untimed forward passes before timing."""
TIMED = 5
"""Timed forward passes; the latency is the fastest (a pass slowed by other work on the machine does not count)."""

_ADAPTER_MARKERS = ("lora_", ".original_module.")
"""Names of weights the served model does not hold: LoRA's adapters (merged into the base weights) and peft's copy
of a head it trains (``modules_to_save`` keeps the trained one)."""


def served_size_mb(model: nn.Module) -> float:
    """MiB of the served model's weights: every parameter and buffer but LoRA's adapters (merged, they add none)."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    total = sum(t.numel() * t.element_size() for name, t in tensors if not any(m in name for m in _ADAPTER_MARKERS))
    return total / 2**20


def latency_ms(task: Task, model: nn.Module, data: PreparedData, batch_size: int, device: torch.device) -> float:
    """Milliseconds per example of the served model's forward pass (see the module's docstring for the method)."""
    rows = max(1, min(batch_size, len(data.val)))
    features = {k: v.to(device) for k, v in task.collate(data.val, range(rows))["features"].items()}
    times = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _served(model):
            for index in range(WARMUP + TIMED):
                _synchronise(device)
                start = time.perf_counter()
                task.forward(model, features)
                _synchronise(device)
                if index >= WARMUP:
                    times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return 1000.0 * min(times) / rows


def measure(task: Task, model: nn.Module, data: PreparedData, batch_size: int, device: torch.device,
            latency: bool) -> Dict[str, float]:
    """The trial's costs: its size, and its latency when a sweep reads it (``latency``: the timing takes passes)."""
    costs = {SIZE_METRIC: served_size_mb(model)}
    if latency:
        with _on(model, device):
            costs[LATENCY_METRIC] = latency_ms(task, model, data, batch_size, device)
    return costs


@contextlib.contextmanager
def _served(model: nn.Module) -> Iterator[None]:
    """LoRA's adapters switched off: the compute of the merged model a LoRA trial serves (the same shapes)."""
    disable: Any = getattr(model, "disable_adapter", None)
    if disable is None or not hasattr(model, "peft_config"):
        yield
        return
    with disable():
        yield


@contextlib.contextmanager
def _on(model: nn.Module, device: torch.device) -> Iterator[None]:
    """The model on ``device`` while it is timed, back where it was after (the Trainer places it for training)."""
    home = next(model.parameters()).device
    model.to(device)
    try:
        yield
    finally:
        model.to(home)


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
