"""Sequence-to-sequence fine-tuning (``data.task: seq2seq``): ``data.source_column`` -> ``data.target_column`` with
``AutoModelForSeq2SeqLM`` (T5, mT5, BART ...): summarisation, translation, any text-to-text mapping.

Sources are tokenised to at most ``data.max_length`` tokens and targets to ``data.max_target_length`` (each as the
tokenizer encodes it, e.g. T5's eos appended); the decoder reads the target shifted right behind the model's
``decoder_start_token_id``, and the labels are the target with -100 on padding. The loss is cross entropy averaged
over target tokens (``val/loss`` over the split's, with ``val/perplexity`` exp of it). Every report also scores
greedy generations on a fixed sample of validation sources: ``val/rouge1``, ``val/rouge2``, ``val/rougeL``,
``val/exact_match``, and ``val/bleu`` with ``data.metric: bleu``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from finesweep.config import DataConfig, ExperimentConfig, TextMetric
from finesweep.errors import ConfigError, DataError
from finesweep.tasks.data import read_table, split_indices, subsample, take
from finesweep.tasks.generation import Prompted, generate_and_score, sample
from finesweep.tasks.generative import GenerativeTask, load_tokenizer, plain_model
from finesweep.tasks.task import Batch, Generated, Inspection, PreparedData, Split
from finesweep.tasks.token_data import IGNORED

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Seq2SeqNotes:
    """What reading and tokenising did, for ``describe``."""

    target_tokens: int
    dropped: int
    """Rows with an empty or missing source or target."""
    cut_sources: int
    """Sources longer than ``max_length`` tokens (cut)."""
    cut_targets: int
    """Targets longer than ``max_target_length`` tokens (cut)."""


@dataclass(frozen=True)
class Seq2SeqData(PreparedData):
    """Prepared seq2seq data with its ``notes``."""

    notes: Optional[Seq2SeqNotes] = None


class Seq2Seq(GenerativeTask):
    """Text to text with an encoder-decoder: the target's tokens given the source."""

    name: ClassVar[str] = "seq2seq"
    auto_class: ClassVar[str] = "AutoModelForSeq2SeqLM"
    shift: ClassVar[bool] = False
    lora_task_type: ClassVar[Optional[str]] = "SEQ_2_SEQ_LM"
    objective_metrics: ClassVar[Tuple[str, ...]] = ("train/loss", "val/loss", "val/perplexity", "val/rouge1",
                                                    "val/rouge2", "val/rougeL", "val/exact_match", "val/bleu")
    points_metrics: ClassVar[Tuple[str, ...]] = ("val/rouge1", "val/rouge2", "val/rougeL", "val/exact_match",
                                                 "val/bleu")

    # --- data -------------------------------------------------------------------------------------

    def inspect(self, data: DataConfig) -> Inspection:
        frame, _ = _rows(data)
        train, val, test = (len(idx) for idx in split_indices(np.zeros(len(frame), dtype=np.int64), data))
        return Inspection(self, (train, val, test))

    def prepare(self, config: ExperimentConfig) -> Seq2SeqData:
        data = config.data
        frame, dropped = _rows(data)
        tokenizer = load_tokenizer(config.model.name_or_path)
        start = _decoder_start(config.model.name_or_path)
        features, labels, cut = encode_pairs(frame, tokenizer, data, start)
        train, val, test = (take(features, labels, idx) for idx in
                            split_indices(np.zeros(len(frame), dtype=np.int64), data))
        notes = Seq2SeqNotes(int((labels != IGNORED).sum()), dropped, *cut)
        return Seq2SeqData(train=train, val=val, test=test, task=self, notes=notes)

    # --- training ---------------------------------------------------------------------------------

    def collate(self, split: Split, indices: Sequence[int]) -> Batch:
        """The encoder's arrays cut to the longest source of the batch, the decoder's and the labels to the longest
        target."""
        import torch

        idx = np.asarray(indices)
        source = max(1, int(split.features["attention_mask"][idx].sum(axis=1).max()))
        target = max(1, int(split.features["decoder_attention_mask"][idx].sum(axis=1).max()))
        features = {name: torch.from_numpy(array[idx][:, :target if name.startswith("decoder") else source]
                                           .astype(np.int64)) for name, array in split.features.items()}
        return {"features": features, "labels": torch.from_numpy(np.ascontiguousarray(split.labels[idx][:, :target]))}

    def forward(self, model: nn.Module, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        logits: torch.Tensor = model(**features, use_cache=False).logits
        return logits

    # --- generation -------------------------------------------------------------------------------

    def generates_each_report(self, config: ExperimentConfig) -> bool:
        return True

    def reported_metrics(self, config: ExperimentConfig) -> Tuple[str, ...]:
        """BLEU only with ``data.metric: bleu``."""
        if config.data.metric is TextMetric.bleu:
            return self.objective_metrics
        return tuple(m for m in self.objective_metrics if m != "val/bleu")

    def generate(self, model: nn.Module, split: Split, data: PreparedData, config: ExperimentConfig,
                 rows: int) -> Optional[Generated]:
        """Greedy outputs for ``rows`` sources of ``split`` (seeded by ``data.seed``), scored against the targets."""
        chosen = sample(len(split), rows, config.data.seed)
        if not chosen:
            return None
        ids, mask, labels = split.features["input_ids"], split.features["attention_mask"], split.labels
        examples = [Prompted(ids[i, :int(mask[i].sum())].tolist(), labels[i][labels[i] != IGNORED].tolist())
                    for i in chosen]
        tokenizer = load_tokenizer(config.model.name_or_path)
        return generate_and_score(model, tokenizer, examples, config, encoder_decoder=True)

    def probe_nll(self, model: nn.Module, input_ids: torch.Tensor) -> Optional[Tuple[torch.Tensor, int]]:
        """The encoder reads the first half of each block and the decoder scores every token of the second half
        (teacher-forced behind the decoder's start token): the summed NLL of the second halves and their tokens.
        An encoder-decoder has no next-token likelihood of a whole text; this is the nearest it has."""
        import torch
        from torch import nn as torch_nn

        half = max(1, input_ids.shape[1] // 2)
        source, target = input_ids[:, :half], input_ids[:, half:]
        with torch.no_grad():
            decoder_input = plain_model(model).prepare_decoder_input_ids_from_labels(labels=target)  # type: ignore[operator]
            logits = model(input_ids=source, attention_mask=torch.ones_like(source), decoder_input_ids=decoder_input,
                           use_cache=False).logits
            nll = torch_nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                                                    reduction="sum")
        return nll, int(target.numel())

    # --- the terminal -----------------------------------------------------------------------------

    def describe(self, data: PreparedData) -> str:
        notes = data.notes if isinstance(data, Seq2SeqData) else None
        line = f"{data.sizes()}, seq2seq"
        if notes is None:
            return line
        parts = [f"{line}, {notes.target_tokens:,} target tokens"]
        if notes.cut_sources or notes.cut_targets:
            parts.append(f"{notes.cut_sources} sources and {notes.cut_targets} targets cut to max_length / "
                         "max_target_length")
        if notes.dropped:
            parts.append(f"{notes.dropped} rows with an empty source or target dropped")
        return "; ".join(parts)


def _rows(data: DataConfig) -> Tuple[pd.DataFrame, int]:
    """The rows with a non-empty source and target (subsampled), and how many were dropped.

    Raises:
        DataError: a missing column; no row with both.
    """
    columns = [data.source_column, data.target_column]
    frame = read_table(data, {"data.source_column": data.source_column, "data.target_column": data.target_column})
    frame = frame[columns].astype(object)
    keep = frame.apply(lambda row: all(_filled(v) for v in row), axis=1).to_numpy(dtype=bool)
    if not keep.any():
        raise DataError(f"data.target_column: no row of {data.path} has both a non-empty source in "
                        f"{data.source_column!r} and a non-empty target in {data.target_column!r} ({len(frame)} rows "
                        "read). Fill them, or point data.source_column and data.target_column at the right columns.")
    kept = frame[keep].astype(str).reset_index(drop=True)
    return subsample(kept, np.zeros(len(kept), dtype=np.int64), data), int((~keep).sum())


def _filled(value: Any) -> bool:
    missing = value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))
    return not missing and bool(str(value).strip())


def encode_pairs(frame: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, data: DataConfig, start: int
                 ) -> Tuple[Dict[str, np.ndarray], np.ndarray, Tuple[int, int]]:
    """Source and target arrays: ``input_ids``/``attention_mask`` (``max_length`` wide), ``decoder_input_ids``/
    ``decoder_attention_mask`` (``max_target_length`` wide, the target behind ``start``), the labels (the target,
    -100 on padding), and how many sources and targets were cut."""
    sources = tokenizer(frame[data.source_column].tolist(), verbose=False)["input_ids"]
    targets = tokenizer(text_target=frame[data.target_column].tolist(), verbose=False)["input_ids"]
    pad = int(tokenizer.pad_token_id)
    encoder = _padded([list(s)[:data.max_length] for s in sources], data.max_length, pad)
    cut_targets = [list(t)[:data.max_target_length] for t in targets]
    decoder = _padded([[start, *t[:-1]] for t in cut_targets], data.max_target_length, pad)
    labels = np.full((len(frame), data.max_target_length), IGNORED, dtype=np.int64)
    for row, target in enumerate(cut_targets):
        labels[row, :len(target)] = target
    features = {"input_ids": encoder[0], "attention_mask": encoder[1], "decoder_input_ids": decoder[0],
                "decoder_attention_mask": decoder[1]}
    cut = (sum(len(s) > data.max_length for s in sources), sum(len(t) > data.max_target_length for t in targets))
    return features, labels, cut


def _padded(rows: List[List[int]], width: int, pad: int) -> Tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(rows), width), pad, dtype=np.int32)
    mask = np.zeros((len(rows), width), dtype=np.int32)
    for index, row in enumerate(rows):
        ids[index, :len(row)] = row
        mask[index, :len(row)] = 1
    return ids, mask


def _decoder_start(path: str) -> int:
    """The model's ``decoder_start_token_id`` (T5: pad, BART: eos), from its config.

    Raises:
        ConfigError: the config has none.
    """
    from transformers import AutoConfig

    config: Any = AutoConfig.from_pretrained(path)
    start = getattr(config, "decoder_start_token_id", None)
    if start is None:
        raise ConfigError(f"model.name_or_path: seq2seq needs the model's decoder_start_token_id, got none in the "
                          f"config of {path}. Use an encoder-decoder model (T5, BART, mT5), or set it in its "
                          "config.json.")
    return int(start)
