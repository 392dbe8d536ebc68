"""The served model of a token-classification (NER) winner: raw text in, its entities with character offsets out.

Logged as an MLflow "model from code": MLflow keeps this file's source next to the weights and runs it on load,
so no pickled object is ever executed, and the weights load from safetensors. The file imports nothing from
finesweep, so the model loads wherever MLflow, torch and transformers are installed::

    model = mlflow.pyfunc.load_model("models:/ner/latest")
    model.predict(pandas.DataFrame({"text": ["mr anna smith lives in paris"]}))["entities"][0]
    # [{"entity_group": "PER", "word": "anna smith", "start": 3, "end": 13, "score": 0.98},
    #  {"entity_group": "LOC", "word": "paris", "start": 23, "end": 28, "score": 0.99}]

The text is split into words as ``\\w+|[^\\w\\s]`` finds them (punctuation is a word of its own), each word's
character offsets kept; a long text is run in consecutive pieces of words that fit ``max_length`` tokens, as in
fine-tuning. A word's tag and score are those of its first sub-token (softmax), and runs of words are grouped into
entities as Hugging Face's token-classification pipeline does with ``aggregation_strategy="first"``, IOBES too:
``B-``/``S-`` (or an ``I-``/``E-`` that does not continue one) start an entity, ``I-``/``E-`` of the same type
continue it, ``E-``/``S-`` end it. An entity's score is the mean of its words' scores; ``word`` is the text from
``start`` to ``end``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd

META_FILE = "finesweep.json"
TEXT = "text"
BATCH = 64
WORD = re.compile(r"\w+|[^\w\s]")

Word = Tuple[str, int, int]
"""A word of the text and its character offsets (start, end)."""


@dataclass(frozen=True)
class ServingMeta:
    """What the served model needs besides its weights (``TokenClassification.serving_meta`` writes it)."""

    task: str
    label_names: Tuple[str, ...]
    """Tags in label-id order (``O``, ``B-LOC``, ...)."""
    max_length: int
    """Tokens per piece, as in fine-tuning."""
    objective: str
    """The metric the sweep optimised (for the record)."""
    scheme: str = "IOB2"
    """IOB2 or IOBES."""

    def to_json(self) -> str:
        """The metadata as the JSON text of ``finesweep.json``."""
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ServingMeta:
        """Read ``finesweep.json`` back."""
        values: Dict[str, Any] = json.loads(text)
        return cls(**{**values, "label_names": tuple(values["label_names"])})


class TokenModel(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined,misc]
    """Splits raw text into words, tags them as in fine-tuning and groups the tags into entities."""

    def load_context(self, context: Any) -> None:
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        folder = Path(context.artifacts["model"])
        self.meta = ServingMeta.from_json((folder / META_FILE).read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.tokenizer.padding_side = "right"
        self.model = AutoModelForTokenClassification.from_pretrained(folder).eval()
        self.room = self.meta.max_length - self.tokenizer.num_special_tokens_to_add(pair=False)

    # No type hints here on purpose: MLflow turns predict()'s hints into a schema of its own and warns;
    # the logged signature (TokenClassification.signature) is the schema.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        texts = self._texts(model_input)
        words = [[(m.group(), m.start(), m.end()) for m in WORD.finditer(text)] for text in texts]
        tags, scores = self._tag(words)
        rows = zip(texts, words, tags, scores, strict=True)
        return pd.DataFrame({"entities": [group(text, w, t, s) for text, w, t, s in rows]})

    def _texts(self, model_input: Any) -> List[str]:
        if isinstance(model_input, pd.DataFrame):
            column = TEXT if TEXT in model_input.columns else model_input.columns[0]
            return [str(text) for text in model_input[column]]
        return [str(item) for item in model_input]

    def _tag(self, texts: Sequence[Sequence[Word]]) -> Tuple[List[List[str]], List[List[float]]]:
        """Each word's tag and score; a word with no sub-token (control characters) is O."""
        tags = [["O"] * len(words) for words in texts]
        scores = [[0.0] * len(words) for words in texts]
        pieces = [(row, begin, end) for row, sizes in enumerate(self._sizes(texts))
                  for begin, end in pieces_of(sizes, self.room)]
        for i in range(0, len(pieces), BATCH):
            batch = pieces[i:i + BATCH]
            probs, encoded = self._probabilities([[w for w, _, _ in texts[r][a:b]] for r, a, b in batch])
            for k, (row, begin, _) in enumerate(batch):
                for position, word in first_positions(encoded.word_ids(k)):
                    tags[row][begin + word] = self.meta.label_names[int(probs[k, position].argmax())]
                    scores[row][begin + word] = float(probs[k, position].max())
        return tags, scores

    def _sizes(self, texts: Sequence[Sequence[Word]]) -> List[np.ndarray]:
        sizes = [np.zeros(len(words), dtype=np.int64) for words in texts]
        filled = [row for row, words in enumerate(texts) if words]
        if filled:
            encoded = self.tokenizer([[w for w, _, _ in texts[row]] for row in filled], is_split_into_words=True,
                                     add_special_tokens=False, verbose=False)
            for k, row in enumerate(filled):
                sizes[row] = np.bincount([w for w in encoded.word_ids(k) if w is not None],
                                         minlength=len(texts[row]))
        return sizes

    def _probabilities(self, pieces: List[List[str]]) -> Tuple[np.ndarray, Any]:
        import torch

        encoded = self.tokenizer(pieces, is_split_into_words=True, truncation=True, max_length=self.meta.max_length,
                                 padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = self.model(**encoded).logits.float()
        return torch.softmax(logits, dim=-1).numpy(), encoded


def pieces_of(sizes: np.ndarray, room: int) -> List[Tuple[int, int]]:
    """Consecutive word spans ``[begin, end)`` whose sub-tokens fit in ``room`` (a longer word is a piece alone)."""
    spans, begin = [], 0
    while begin < len(sizes):
        end, used = begin, 0
        while end < len(sizes) and used + int(sizes[end]) <= room:
            used += int(sizes[end])
            end += 1
        end = max(end, begin + 1)
        spans.append((begin, end))
        begin = end
    return spans


def first_positions(word_ids: Sequence[Optional[int]]) -> List[Tuple[int, int]]:
    """``(position, word)`` of each word's first sub-token."""
    found, previous = [], None
    for position, word in enumerate(word_ids):
        if word is not None and word != previous:
            found.append((position, word))
        previous = word
    return found


def group(text: str, words: Sequence[Word], tags: Sequence[str], scores: Sequence[float]) -> List[Dict[str, Any]]:
    """The entities of one text from its words' tags: ``entity_group``, ``word``, ``start``, ``end``, ``score``."""
    entities: List[Dict[str, Any]] = []
    run: List[int] = []
    kind, previous = "", "O"
    for i, tag in enumerate(tags):
        prefix, tag_kind = (tag[0], tag[2:]) if tag != "O" and "-" in tag else ("O", "")
        if run and prefix in "IE" and previous in "BI" and tag_kind == kind:
            run.append(i)
        else:
            if run:
                entities.append(_entity(text, words, scores, run, kind))
            run, kind = ([i], tag_kind) if prefix != "O" else ([], "")
        previous = prefix
    if run:
        entities.append(_entity(text, words, scores, run, kind))
    return entities


def _entity(text: str, words: Sequence[Word], scores: Sequence[float], run: List[int], kind: str) -> Dict[str, Any]:
    start, end = words[run[0]][1], words[run[-1]][2]
    return {"entity_group": kind, "word": text[start:end], "start": int(start), "end": int(end),
            "score": float(np.mean([scores[i] for i in run]))}


mlflow.models.set_model(TokenModel())
