"""How a trial failed, and whether it is worth trying again.

A failure is one of three kinds, recorded on the trial's MLflow run as ``finesweep.failure``:

- ``nan``: the training loss became NaN or infinite (``DivergedError``); the trial stops at once,
  and a retry would only diverge again, so it is never retried.
- ``oom``: out of memory (CPU ``MemoryError``, ``torch.cuda.OutOfMemoryError``); retried, when
  ``search.max_retries`` allows, with half the batch size and twice the gradient accumulation, so the
  effective batch (and the learning-rate schedule) stays the same.
- ``error``: anything else (a bug, a lost node); retried as it was, from the last checkpoint.

Torch-free: the driver classifies from the error text Ray hands it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, NamedTuple, Optional

from finesweep.errors import DivergedError

if TYPE_CHECKING:
    from finesweep.config import ExperimentConfig
    from finesweep.journal.records import TrialRecord

ERROR, NAN, OOM = "error", "nan", "oom"
KINDS = (ERROR, NAN, OOM)

OOM_SIGNS = ("OutOfMemoryError", "MemoryError", "CUDA out of memory", "can't allocate memory",
             "DefaultCPUAllocator: not enough memory")


class Failure(NamedTuple):
    """A failure's kind (error, nan, oom) and its one-line summary (the exception's last line)."""

    kind: str
    summary: str


def classify(error: Any) -> Failure:
    """Classify a failed trial from its error (the text or exception Ray reports)."""
    text = str(error) if error is not None else ""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    summary = next((line for line in reversed(lines) if not line.startswith(("File ", "^", "~"))),
                   "the trial failed without an error message")
    if DivergedError.__name__ in text:
        return Failure(NAN, summary)
    if any(sign in text for sign in OOM_SIGNS):
        return Failure(OOM, summary)
    return Failure(ERROR, summary)


def retry_overrides(failure: Failure, record: TrialRecord, config: ExperimentConfig) -> Optional[Dict[str, Any]]:
    """The values a retry of this trial runs with (empty: unchanged), or None when it must not be retried."""
    if failure.kind == NAN:
        return None
    if failure.kind == OOM:
        batch = int(record.params.get("data.batch_size", config.data.batch_size))
        accumulate = int(record.params.get("trainer.accumulate_grad_batches", config.trainer.accumulate_grad_batches))
        if batch < 2:
            return None
        return {"data.batch_size": batch // 2, "trainer.accumulate_grad_batches": accumulate * 2}
    return {}
