"""Entity-level precision, recall and F1, and token accuracy, as torchmetrics metrics over a whole split.

The entities are read from the tag sequences as seqeval reads them by default (its conlleval-compatible mode,
``seqeval.metrics.f1_score(y_true, y_pred)`` without ``mode="strict"``), for IOB2 and IOBES alike: an entity
starts at ``B-``/``S-``, at an ``I-``/``E-`` that follows ``O``, ``E-``, ``S-`` or another type, and ends before
the next start or ``O``, or after ``E-``/``S-``. An entity counts as found when its type and first and last word
match a gold entity. Micro averages over the types; a zero denominator gives 0 (seqeval's default, without the
warning): no predicted entities -> precision 0; no gold entities -> recall 0; both 0 -> F1 0.

Only labelled positions count (label != -100: a word's first sub-token). Each row (a sentence, or a piece of a
long one) is a sequence of its own: no entity spans two rows.

The counts are ``dist_reduce_fx="sum"`` states, so the scores are exact under DDP too.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch
from torchmetrics import Metric

from finesweep.tasks.token_data import IGNORED

CODES = {"O": 0, "B": 1, "I": 2, "E": 3, "S": 4}
O, B, I, E, S = range(5)  # noqa: E741 - the scheme's own letters


def tag_tables(label_names: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor, Tuple[str, ...]]:
    """Per label id (and one extra id, ``len(label_names)``, for the ``O`` that pads and separates rows): its
    prefix code (``CODES``), its entity type's index (-1 for ``O``), and the sorted entity types."""
    types = tuple(sorted({name[2:] for name in label_names if name != "O"}))
    index = {kind: i for i, kind in enumerate(types)}
    prefixes = [CODES[name[0]] if name != "O" else O for name in label_names] + [O]
    kinds = [index[name[2:]] if name != "O" else -1 for name in label_names] + [-1]
    return torch.tensor(prefixes, dtype=torch.long), torch.tensor(kinds, dtype=torch.long), types


def entities(tags: torch.Tensor, labels: torch.Tensor, prefixes: torch.Tensor, kinds: torch.Tensor
             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The entities of each row's labelled positions: a key per entity (where it starts and ends among the
    batch's labelled positions: equal keys are the same span) and its type index.

    Args:
        tags: tag ids (B, L) to read entities from (predictions or the labels themselves).
        labels: the labels (B, L); positions with ``IGNORED`` are skipped.
        prefixes, kinds: ``tag_tables``' first two.
    """
    flat = _flat(tags, labels != IGNORED, len(prefixes) - 1)
    tag, kind = prefixes[flat], kinds[flat]
    before = torch.cat([tag.new_full((1,), O), tag[:-1]])
    kind_before = torch.cat([kind.new_full((1,), -1), kind[:-1]])
    inside_before, ends_after = _is(before, B, I), _is(before, E, S)
    opens = _is(tag, E, I)
    end = ends_after | (inside_before & _is(tag, B, S, O)) | ((before != O) & (kind_before != kind))
    start = (_is(tag, B, S) | (ends_after & opens) | ((before == O) & opens)
             | ((tag != O) & (kind_before != kind)))
    # Every row ends with an O, so starts and ends pair up in order; an end at i closes the entity at i - 1.
    first, last = torch.nonzero(start).squeeze(1), torch.nonzero(end).squeeze(1) - 1
    return first * flat.numel() + last, kind[first]


def _flat(tags: torch.Tensor, mask: torch.Tensor, outside: int) -> torch.Tensor:
    """Each row's labelled positions moved to its front in order, the rest and one more column ``outside``
    (so no entity crosses rows), flattened."""
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices
    kept = torch.gather(mask, 1, order)
    packed = torch.where(kept, torch.gather(tags.long(), 1, order), outside)
    return torch.cat([packed, packed.new_full((len(packed), 1), outside)], dim=1).reshape(-1)


def _is(codes: torch.Tensor, *wanted: int) -> torch.Tensor:
    found = codes == wanted[0]
    for value in wanted[1:]:
        found = found | (codes == value)
    return found


def scores(found: float, predicted: float, gold: float) -> Tuple[float, float, float]:
    """Precision, recall and F1 from the counts, 0 where a denominator is 0 (seqeval's default)."""
    precision = found / predicted if predicted else 0.0
    recall = found / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


class EntityScores(Metric):
    """Entity-level micro precision, recall and F1 (``entity_precision``, ``entity_recall``, ``entity_f1``).

    Args:
        label_names: the tag of each label id (``O``, ``B-PER``, ...).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    prefixes: torch.Tensor
    kinds: torch.Tensor
    found: torch.Tensor
    predicted: torch.Tensor
    gold: torch.Tensor

    def __init__(self, label_names: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        prefixes, kinds, self.types = tag_tables(label_names)
        self.register_buffer("prefixes", prefixes, persistent=False)
        self.register_buffer("kinds", kinds, persistent=False)
        for name in ("found", "predicted", "gold"):
            self.add_state(name, torch.zeros(len(self.types), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Count the entities of a batch: ``preds`` are predicted tag ids, ``target`` the labels (both B, L)."""
        predicted, predicted_kind = entities(preds, target, self.prefixes, self.kinds)
        gold, gold_kind = entities(target, target, self.prefixes, self.kinds)
        size = len(self.types)
        hits = torch.isin(predicted * size + predicted_kind, gold * size + gold_kind)
        self.found += torch.bincount(predicted_kind[hits], minlength=size)
        self.predicted += torch.bincount(predicted_kind, minlength=size)
        self.gold += torch.bincount(gold_kind, minlength=size)

    def compute(self) -> Dict[str, torch.Tensor]:
        precision, recall, f1 = scores(float(self.found.sum()), float(self.predicted.sum()), float(self.gold.sum()))
        return {"entity_f1": torch.tensor(f1), "entity_precision": torch.tensor(precision),
                "entity_recall": torch.tensor(recall)}

    def table(self) -> List[Dict[str, Any]]:
        """Per entity type that was predicted or is in the labels (sorted), then ``micro avg``: precision,
        recall, F1 and support (gold entities), as ``seqeval.metrics.classification_report`` gives them."""
        rows = []
        for i, kind in enumerate(self.types):
            found, predicted, gold = int(self.found[i]), int(self.predicted[i]), int(self.gold[i])
            if predicted or gold:
                rows.append(_row(kind, found, predicted, gold))
        rows.append(_row("micro avg", int(self.found.sum()), int(self.predicted.sum()), int(self.gold.sum())))
        return rows


def _row(name: str, found: int, predicted: int, gold: int) -> Dict[str, Any]:
    precision, recall, f1 = scores(found, predicted, gold)
    return {"entity": name, "precision": precision, "recall": recall, "f1": f1, "support": gold}


class TokenAccuracy(Metric):
    """The share of labelled positions (a word's first sub-token) whose predicted tag is the label."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    correct: torch.Tensor
    total: torch.Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Count a batch: ``preds`` are predicted tag ids, ``target`` the labels (both B, L)."""
        mask = target != IGNORED
        self.correct += (preds[mask] == target[mask]).sum()
        self.total += mask.sum()

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total if int(self.total) else torch.zeros(())
