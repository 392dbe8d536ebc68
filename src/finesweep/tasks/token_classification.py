"""Named-entity recognition (token classification) with Hugging Face token-classification models.

The data (``token_data.py``) is a CoNLL file, a table of word lists and tag lists, or a folder of train/val/test
files, tagged IOB2 or IOBES. It is encoded once, on the driver, with the model's fast tokenizer
(``is_split_into_words``): a word's tag labels its first sub-token; every other position (later sub-tokens,
special tokens, padding) is -100, which the loss and the metrics skip.

A sentence longer than ``data.max_length`` tokens is split at word boundaries into consecutive pieces that fit,
each a row of its own (trained on and scored alone), so no word is dropped. A boundary outside an entity is
preferred; an entity is cut only when no such boundary fits in the piece (an entity longer than a piece), and
then each part is scored in its own piece (its second part starts with ``I-``, which reads as an entity start).
A single word longer than a whole piece keeps its first sub-tokens, its label on the first. The pieces are
split by sentence (train, validation and test never share a sentence); cross-validation folds
(``final.cv_folds``) deal pieces, so the pieces of one long sentence may land in different folds.

The model is ``AutoModelForTokenClassification`` with a new head; the loss is cross entropy over the labelled
positions; the metrics (``token_metrics.py``) are entity-level micro F1, precision and recall as seqeval computes
them by default, and token accuracy. The served model (``token_predictor.py``) answers entities with
character offsets, as Hugging Face's token-classification pipeline does.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from finesweep.config import DataConfig, ExperimentConfig
from finesweep.errors import ConfigError, one_line
from finesweep.tasks.packaging import package_beside
from finesweep.tasks.task import Batch, Inspection, PreparedData, Split
from finesweep.tasks.token_data import IGNORED, OUTSIDE, Sentence, read_tagged
from finesweep.tasks.transformers_head import TransformersHeadTask

if TYPE_CHECKING:
    import torch
    from mlflow.models import ModelSignature
    from torchmetrics import MetricCollection
    from transformers import PreTrainedTokenizerBase

ENTITY_FIELDS = (("entity_group", "string"), ("word", "string"), ("start", "long"), ("end", "long"),
                 ("score", "double"))
"""What the served model answers per entity (``token_predictor.py``), in MLflow's types."""


@dataclass(frozen=True)
class TokenNotes:
    """What reading and encoding the data did, for ``describe``."""

    scheme: str
    sentences: Tuple[int, int, int]
    """Sentences of the train, validation and test splits (before long ones were split into pieces)."""
    max_length: int
    long_sentences: int = 0
    """Sentences longer than ``max_length`` tokens, split into pieces."""
    pieces: int = 0
    """The pieces the long sentences became."""
    cut_entities: int = 0
    """Piece boundaries inside an entity (only where the entity alone is longer than a piece)."""
    long_words: int = 0
    """Words longer than a whole piece: they keep their first sub-tokens."""
    words: int = 0
    unlabelled_words: int = 0
    """Words with no sub-token (the tokenizer reads them as nothing, e.g. control characters): no label."""
    fix_note: str = ""


@dataclass(frozen=True)
class TokenData(PreparedData):
    """Prepared token-classification data: rows are sentences or pieces of long ones; ``notes`` for the terminal."""

    notes: Optional[TokenNotes] = None


class TokenClassification(TransformersHeadTask):
    """One tag per word (named entities in IOB2 or IOBES), predicted on the word's first sub-token."""

    name: ClassVar[str] = "token_classification"
    auto_class: ClassVar[str] = "AutoModelForTokenClassification"
    predictor_module: ClassVar[str] = "finesweep.tasks.token_predictor"
    objective_metrics: ClassVar[Tuple[str, ...]] = ("train/loss", "val/loss", "val/entity_f1", "val/entity_precision",
                                                    "val/entity_recall", "val/token_accuracy")
    points_metrics: ClassVar[Tuple[str, ...]] = ("val/entity_f1", "val/entity_precision", "val/entity_recall",
                                                 "val/token_accuracy")
    lora_task_type: ClassVar[Optional[str]] = "TOKEN_CLS"
    breakdown_name: ClassVar[str] = "per_entity"
    pip_requirements: ClassVar[Tuple[str, ...]] = ("mlflow", "torch", "transformers", "safetensors", "pandas", "numpy")

    # --- data -------------------------------------------------------------------------------------

    def inspect(self, data: DataConfig) -> Inspection:
        """Read and check the tagged sentences; the rows are sentences (long ones are split only when encoding)."""
        return Inspection(self, read_tagged(data).sizes)

    def prepare(self, config: ExperimentConfig) -> TokenData:
        tagged = read_tagged(config.data)
        tokenizer = load_tokenizer(config.model.name_or_path)
        lookup = {tag: index for index, tag in enumerate(tagged.tag_names)}
        encoded = [encode(split, tokenizer, lookup, config.data.max_length) for split in tagged.splits]
        counts: Counter[str] = sum((count for _, count in encoded), Counter())
        notes = TokenNotes(tagged.scheme, tagged.sizes, config.data.max_length, fix_note=tagged.fix_note,
                           **{name: counts[name] for name in COUNTS})
        train, val, test = (split for split, _ in encoded)
        return TokenData(train=train, val=val, test=test, task=self, label_names=tagged.tag_names, notes=notes)

    # --- the model --------------------------------------------------------------------------------

    # --- training ---------------------------------------------------------------------------------

    def collate(self, split: Split, indices: Sequence[int]) -> Batch:
        """The base batch (features cut to the longest row), with the labels cut to the same width."""
        batch = super().collate(split, indices)
        width = batch["features"]["input_ids"].shape[1]
        batch["labels"] = batch["labels"][:, :width]
        return batch

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
        from torch import nn

        logits = outputs.float()
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                           ignore_index=IGNORED, label_smoothing=smoothing)

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.argmax(dim=-1)

    def metrics(self, data: PreparedData, prefix: str) -> MetricCollection:
        from torchmetrics import MetricCollection

        from finesweep.tasks.token_metrics import EntityScores, TokenAccuracy

        # EntityScores answers entity_f1, entity_precision and entity_recall; the collection prefixes each.
        return MetricCollection({"entity": EntityScores(data.label_names), "token_accuracy": TokenAccuracy()},
                                prefix=prefix)

    def breakdown(self, batches: Sequence[Tuple[np.ndarray, np.ndarray]], data: PreparedData) -> List[Dict[str, Any]]:
        """Precision, recall, F1 and support per entity type, then ``micro avg``, as seqeval's
        ``classification_report`` gives them."""
        import torch

        from finesweep.tasks.token_metrics import EntityScores

        scores = EntityScores(data.label_names)
        for predictions, labels in batches:
            scores.update(torch.as_tensor(predictions), torch.as_tensor(labels))
        return scores.table()

    # --- serving ----------------------------------------------------------------------------------

    def serving_meta(self, config: ExperimentConfig, data: PreparedData) -> Dict[str, Any]:
        iobes = any(name[0] in "ES" for name in data.label_names if name != OUTSIDE)
        return {"task": self.name, "label_names": list(data.label_names), "max_length": config.data.max_length,
                "objective": config.objective.metric, "scheme": "IOBES" if iobes else "IOB2"}

    def signature(self, meta: Mapping[str, Any]) -> ModelSignature:
        """Input: a string column ``text``. Output: a column ``entities``, per row a list of objects
        ``{entity_group, word, start, end, score}``."""
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema
        from mlflow.types.schema import Array, Object, Property

        entity = Object([Property(name, kind) for name, kind in ENTITY_FIELDS])
        return ModelSignature(Schema([ColSpec("string", "text")]), Schema([ColSpec(Array(entity), "entities")]))

    def package(self, folder: Path, preprocessor: str, meta: Mapping[str, Any]) -> None:
        package_beside(folder, meta, load_tokenizer(preprocessor))

    def request_example(self, meta: Mapping[str, Any]) -> Dict[str, Any]:
        return {"dataframe_records": [{"text": "Anna Smith flew from Paris to New York for the Red Cross."}]}

    def describe(self, data: PreparedData) -> str:
        types = sorted({name[2:] for name in data.label_names if name != OUTSIDE})
        kinds = f"{len(types)} entity types ({', '.join(types[:6])}{', ...' if len(types) > 6 else ''})"
        notes = data.notes if isinstance(data, TokenData) else None
        if notes is None:
            return f"{data.sizes()}, token classification of {kinds}"
        train, val, test = notes.sentences
        parts = [f"{train}/{val}/{test} train/val/test sentences, {notes.scheme} tags of {kinds}"]
        if notes.long_sentences:
            cut = f" ({_count(notes.cut_entities, 'cut')} inside an entity longer than a piece)" \
                if notes.cut_entities else ""
            parts.append(f"{_count(notes.long_sentences, 'sentence')} longer than {notes.max_length} tokens "
                         f"{'were' if notes.long_sentences > 1 else 'was'} split into {notes.pieces} pieces{cut}")
        else:
            parts.append(f"every sentence fits in {notes.max_length} tokens")
        parts.append(f"{_count(notes.unlabelled_words, 'word')} with no sub-token left unlabelled"
                     if notes.unlabelled_words else "no word dropped")
        if notes.long_words:
            parts.append(f"{_count(notes.long_words, 'word')} longer than a piece cut to the sub-tokens that fit")
        if notes.fix_note:
            parts.append(notes.fix_note)
        return "; ".join(parts)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


# --- encoding ---------------------------------------------------------------------------------------

COUNTS = ("long_sentences", "pieces", "cut_entities", "long_words", "words", "unlabelled_words")
"""What ``encode`` counts (``TokenNotes``' fields)."""


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """The model's fast tokenizer (word ids need one); byte-level BPE ones (RoBERTa, GPT-2) with
    ``add_prefix_space``, which pre-split words need.

    Raises:
        ConfigError: no tokenizer at ``path``, or not a fast one.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        if tokenizer.is_fast and "ByteLevel" in str(tokenizer.backend_tokenizer.pre_tokenizer) and \
                not getattr(tokenizer, "add_prefix_space", True):
            tokenizer = AutoTokenizer.from_pretrained(path, add_prefix_space=True)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.name_or_path: cannot load a tokenizer from {path!r} ({one_line(exc)}). Point it "
                          "at a Hugging Face model folder (with config.json) or, when online, a hub id.") from None
    if not tokenizer.is_fast:
        raise ConfigError(f"model.name_or_path: token classification needs a fast tokenizer (its word ids place "
                          f"each label), got {type(tokenizer).__name__} from {path!r}. Use a model whose folder "
                          "has a tokenizer.json, or one transformers can convert.")
    tokenizer.padding_side = "right"  # batches are trimmed from the right (Task.collate)
    return tokenizer


def encode(sentences: Sequence[Sentence], tokenizer: PreTrainedTokenizerBase, lookup: Mapping[str, int],
           max_length: int) -> Tuple[Split, Counter[str]]:
    """Tokenise the sentences, split the long ones into pieces, label each word's first sub-token.

    Returns:
        The split (int32 features, int64 labels, both ``max_length`` wide) and what was counted (``COUNTS``).
    """
    counts: Counter[str] = Counter()
    room = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    pieces: List[Tuple[Sequence[str], Sequence[str]]] = []
    for sentence, sizes in zip(sentences, word_sizes(tokenizer, [s.words for s in sentences]), strict=True):
        can_start = [tag[0] not in "IE" for tag in sentence.tags]  # a piece may begin here without cutting
        spans, cut = plan_pieces(sizes.tolist(), can_start, room)
        counts["words"] += len(sentence.words)
        counts["cut_entities"] += cut
        counts["long_words"] += int(np.sum(sizes > room))
        if len(spans) > 1:
            counts["long_sentences"] += 1
            counts["pieces"] += len(spans)
        pieces.extend((sentence.words[a:b], sentence.tags[a:b]) for a, b in spans)
    features, labels = _encode_pieces(pieces, tokenizer, lookup, max_length)
    counts["unlabelled_words"] = counts["words"] - int(np.sum(labels != IGNORED))
    kept = np.flatnonzero((labels != IGNORED).any(axis=1))  # a piece of words with no sub-token has nothing to learn
    return Split({name: array[kept] for name, array in features.items()}, labels[kept]), counts


def word_sizes(tokenizer: PreTrainedTokenizerBase, sentences: Sequence[Sequence[str]]) -> List[np.ndarray]:
    """Sub-tokens of each word of each sentence (without special tokens)."""
    if not sentences:
        return []
    encoded = tokenizer([list(words) for words in sentences], is_split_into_words=True, add_special_tokens=False,
                        verbose=False)
    return [np.bincount([w for w in encoded.word_ids(i) if w is not None], minlength=len(words))
            for i, words in enumerate(sentences)]


def plan_pieces(word_sizes: Sequence[int], can_start: Sequence[bool], room: int
                ) -> Tuple[List[Tuple[int, int]], int]:
    """Consecutive word spans ``[start, end)`` of one sentence whose sub-tokens fit in ``room``, and how many of
    their boundaries cut an entity.

    Each piece takes as many words as fit, then gives back words to end before a word that may begin a piece
    (``can_start``: its tag is O, B- or S-), unless none in the piece may. A word longer than ``room`` is a
    piece alone (it is truncated when encoded).
    """
    sizes = np.asarray(word_sizes, dtype=np.int64)
    count = len(sizes)
    if int(sizes.sum()) <= room:
        return [(0, count)], 0
    spans: List[Tuple[int, int]] = []
    cut, begin = 0, 0
    while begin < count:
        end, used = begin, 0
        while end < count and used + sizes[end] <= room:
            used += int(sizes[end])
            end += 1
        if end == count:
            spans.append((begin, end))
            break
        if end == begin:
            end = begin + 1  # one word longer than the room
        else:
            end = next((k for k in range(end, begin, -1) if can_start[k]), end)
        cut += int(not can_start[end]) if end < count else 0
        spans.append((begin, end))
        begin = end
    return spans, cut


def _encode_pieces(pieces: Sequence[Tuple[Sequence[str], Sequence[str]]], tokenizer: PreTrainedTokenizerBase,
                   lookup: Mapping[str, int], max_length: int) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    labels = np.full((len(pieces), max_length), IGNORED, dtype=np.int64)
    if not pieces:
        names = tokenizer.model_input_names
        return {name: np.zeros((0, max_length), dtype=np.int32) for name in names}, labels
    encoded = tokenizer([list(words) for words, _ in pieces], is_split_into_words=True, truncation=True,
                        max_length=max_length, padding="max_length", return_tensors="np", verbose=False)
    for row, (_, tags) in enumerate(pieces):
        words = np.array([-1 if w is None else w for w in encoded.word_ids(row)], dtype=np.int64)
        first = (words >= 0) & (words != np.concatenate([[-1], words[:-1]]))
        labels[row, np.flatnonzero(first)] = [lookup[tags[w]] for w in words[first]]
    return {name: np.ascontiguousarray(array, dtype=np.int32) for name, array in encoded.items()}, labels
