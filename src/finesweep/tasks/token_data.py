"""Tagged sentences for token classification: read from CoNLL files, tables or a folder of splits, tags checked.

``data.path`` is one of:

- a CoNLL-style file (``.conll``, ``.txt``, ``.iob``, ``.bio``): one word per line, whitespace-separated columns,
  the word first and its tag last, a blank line between sentences; ``-DOCSTART-`` lines are skipped;
- a table (JSONL, Parquet, CSV, TSV) with a list of words (``data.tokens_column``) and a list of tags
  (``data.tags_column``) per row; in CSV/TSV both are strings, split at whitespace;
- a folder holding ``train.<ext>``, ``val.<ext>`` (or ``dev``/``validation``) and optionally ``test.<ext>`` of
  one of those kinds: the splits as given. Without a test file, ``data.test_fraction`` of the train file's
  sentences is held out (seeded); ``data.max_samples`` subsamples the train file only.

One file is subsampled (``data.max_samples``) and split by sentence with ``split_indices`` (seeded).

Tags are IOB2 (``B-``, ``I-``, ``O``) or IOBES (adds ``E-``, ``S-``), detected from the prefixes seen. A tag
without one of those prefixes (``PER``, BILOU's ``U-``/``L-``) is refused with its line or row. Tags that
break the scheme are repaired and counted: an ``I-X`` that starts an entity (after ``O`` or another type)
becomes ``B-X``; under IOBES also ``E-X`` that starts one becomes ``S-X``, and ``B-X``/``I-X`` that end one
become ``S-X``/``E-X``. The repairs never change the entities seqeval's default (conlleval) mode reads; they
give the model one consistent convention to learn.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from finesweep.config import DataConfig
from finesweep.errors import DataError
from finesweep.tasks.data import READERS, read_table, split_indices, subsample

logger = logging.getLogger("finesweep.tasks")

CONLL_SUFFIXES = (".conll", ".txt", ".iob", ".bio")
"""Files read as CoNLL; ``.tsv`` stays a table (``data.py``'s readers)."""
SPLIT_FILES = {"train": ("train",), "val": ("val", "dev", "validation"), "test": ("test",)}
"""File stems a folder of splits may use, per split."""
PREFIXES = ("B", "I", "E", "S")
OUTSIDE = "O"
IGNORED = -100
"""The label of positions that are not scored: special tokens, padding, a word's later sub-tokens."""
FORMATS = ("a CoNLL file (.conll, .txt, .iob, .bio), a JSONL, Parquet, CSV or TSV table, or a folder of "
           "train/val/test files")


@dataclass(frozen=True)
class Sentence:
    """One tagged sentence and where it came from (for error messages)."""

    words: Tuple[str, ...]
    tags: Tuple[str, ...]
    source: str
    """The file's name."""
    line: int = 0
    """CoNLL: the line of its first word (its words are on consecutive lines); 0 for a table row."""
    row: int = 0
    """Tables: the row, counting from 1; 0 for CoNLL."""

    def where(self, word: int) -> str:
        """Where word ``word`` of the sentence is, as an error message names it."""
        if self.line:
            return f"line {self.line + word} of {self.source}"
        return f"row {self.row} of {self.source} (word {word + 1})"


@dataclass(frozen=True)
class Tagged:
    """The sentences of each split, their tag set and scheme, and what repairing the tags changed."""

    splits: Tuple[List[Sentence], List[Sentence], List[Sentence]]
    tag_names: Tuple[str, ...]
    """Every tag seen, ``O`` first, then sorted: the label ids."""
    scheme: str
    """IOB2 or IOBES."""
    fixed: int = 0
    """Tags repaired to a valid sequence of the scheme."""
    fix_note: str = ""
    """One line about the repairs (empty when none)."""

    @property
    def sizes(self) -> Tuple[int, int, int]:
        """Sentences per split (train, val, test)."""
        train, val, test = self.splits
        return len(train), len(val), len(test)


def read_tagged(data: DataConfig) -> Tagged:
    """Read, check, repair and split the tagged sentences of ``data.path``.

    Raises:
        DataError: a missing or unknown file, a malformed line or row, a tag outside IOB2/IOBES, too few sentences.
    """
    path = Path(data.path)
    if path.is_dir():
        files = [_required_file(path, "train"), _required_file(path, "val"), _split_file(path, "test")]
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"data.path: file or folder not found, got {data.path}. Point data.path at {FORMATS}.")
    read = [_read_file(file, data) if file is not None else [] for file in files]
    if not any(read):
        raise DataError(f"data.path: no tagged sentences in {data.path}. Give it one word and its tag per line "
                        "(CoNLL) or rows of words and tags.")
    iobes = any(tag[0] in "ES" for sentences in read for s in sentences for tag in s.tags if tag != OUTSIDE)
    repaired, fixes = _repair_all(read, iobes)
    names = sorted({tag for sentences in repaired for s in sentences for tag in s.tags})
    if names == [OUTSIDE]:
        raise DataError(f"data.path: token classification needs at least one entity tag (B-PER, ...), got only "
                        f"O tags in {data.path}. Check data.tags_column, or that the tag is the last column.")
    scheme = "IOBES" if iobes else "IOB2"
    note = _fix_note(fixes, scheme)
    if note:
        logger.warning("%s: %s", data.path, note)
    splits = _split_file_sentences(repaired[0], data) if len(files) == 1 else \
        _folder_splits(path, repaired, files[2] is not None, data)
    ordered = tuple(([OUTSIDE] if OUTSIDE in names else []) + [name for name in names if name != OUTSIDE])
    return Tagged(splits, ordered, scheme, len(fixes), note)


def _split_file_sentences(sentences: List[Sentence], data: DataConfig
                          ) -> Tuple[List[Sentence], List[Sentence], List[Sentence]]:
    chosen = [sentences[i] for i in _subsample(len(sentences), data)]
    train, val, test = split_indices(np.zeros(len(chosen), dtype=np.int64), data)
    return [chosen[i] for i in train], [chosen[i] for i in val], [chosen[i] for i in test]


def _folder_splits(folder: Path, read: Sequence[List[Sentence]], test_given: bool, data: DataConfig
                   ) -> Tuple[List[Sentence], List[Sentence], List[Sentence]]:
    train = [read[0][i] for i in _subsample(len(read[0]), data)]
    val, test = read[1], read[2]
    if not test_given:
        held = _held_out(len(train), data.test_fraction, data.seed)
        test = [train[i] for i in np.flatnonzero(held)]
        train = [train[i] for i in np.flatnonzero(~held)]
    if not train or not val:
        raise DataError(f"data.path: the folder {folder} gives {len(train)} train and {len(val)} validation "
                        "sentences; each split needs at least one. Add sentences to the empty split's file.")
    return train, val, test


def _subsample(rows: int, data: DataConfig) -> List[int]:
    """``data.max_samples`` of the sentences (seeded), in file order; all of them without it."""
    return [int(i) for i in subsample(pd.DataFrame({"i": np.arange(rows)}), np.zeros(rows), data)["i"]]


def _required_file(folder: Path, split: str) -> Path:
    found = _split_file(folder, split)
    if found is None:
        names = "/".join(SPLIT_FILES[split])
        raise DataError(f"data.path: the folder {folder} has no {names} file (e.g. {SPLIT_FILES[split][0]}.conll "
                        "or .jsonl). Put train.<ext>, val.<ext> and optionally test.<ext> in it.")
    return found


def _split_file(folder: Path, split: str) -> Optional[Path]:
    suffixes = (*CONLL_SUFFIXES, *READERS)
    found = [folder / f"{stem}{suffix}" for stem in SPLIT_FILES[split] for suffix in suffixes
             if (folder / f"{stem}{suffix}").is_file()]
    if len(found) > 1:
        raise DataError(f"data.path: the folder {folder} has {len(found)} {split} files "
                        f"({', '.join(p.name for p in found)}). Keep one of them.")
    return found[0] if found else None


def _held_out(rows: int, fraction: float, seed: int) -> np.ndarray:
    held = np.zeros(rows, dtype=bool)
    held[np.random.default_rng(seed).permutation(rows)[:int(round(rows * fraction))]] = True
    return held


def _read_file(path: Path, data: DataConfig) -> List[Sentence]:
    suffix = path.suffix.lower()
    if suffix in CONLL_SUFFIXES:
        return read_conll(path, data.encoding)
    if suffix in READERS:
        return _read_rows(path, data)
    raise DataError(f"data.path: unknown file type {path.suffix!r} for token classification, got {path}. "
                    f"Use {FORMATS}.")


def read_conll(path: Path, encoding: str = "utf-8") -> List[Sentence]:
    """The sentences of a CoNLL file: the first column is the word, the last its tag.

    Raises:
        DataError: a line with a single column, or a tag outside IOB2/IOBES.
    """
    sentences: List[Sentence] = []
    words: List[str] = []
    tags: List[str] = []
    first = 0
    with path.open(encoding=encoding, errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            parts = line.split()
            if not parts or parts[0] == "-DOCSTART-":
                if words:
                    sentences.append(Sentence(tuple(words), tuple(tags), path.name, line=first))
                words, tags = [], []
                continue
            if len(parts) < 2:
                raise DataError(f"data.path: line {number} of {path} has one column ({parts[0]!r}); a CoNLL line "
                                "needs the word first and its tag last, separated by whitespace. Add the tag, or "
                                "leave the line blank between sentences.")
            if not words:
                first = number
            check_tag(parts[-1], f"line {number} of {path.name}")
            words.append(parts[0])
            tags.append(parts[-1])
    if words:
        sentences.append(Sentence(tuple(words), tuple(tags), path.name, line=first))
    return sentences


def _read_rows(path: Path, data: DataConfig) -> List[Sentence]:
    keys = {"data.tokens_column": data.tokens_column, "data.tags_column": data.tags_column}
    frame = read_table(dataclasses.replace(data, path=str(path)), keys)
    sentences = []
    for row, (raw_words, raw_tags) in enumerate(zip(frame[data.tokens_column], frame[data.tags_column],
                                                    strict=True), 1):
        words = _cell(raw_words, row, path, "data.tokens_column", data.tokens_column)
        tags = _cell(raw_tags, row, path, "data.tags_column", data.tags_column)
        if len(words) != len(tags):
            raise DataError(f"data.path: row {row} of {path} has {len(words)} words in {data.tokens_column!r} but "
                            f"{len(tags)} tags in {data.tags_column!r}; every word needs exactly one tag. Fix row "
                            f"{row}, or check data.tokens_column and data.tags_column.")
        if not words:
            continue  # an empty (or missing) sentence has nothing to tag
        for index, tag in enumerate(tags):
            check_tag(tag, f"row {row} of {path.name} (word {index + 1})")
        sentences.append(Sentence(tuple(words), tuple(tags), path.name, row=row))
    return sentences


def _cell(value: Any, row: int, path: Path, key: str, column: str) -> List[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, (list, tuple, np.ndarray)):
        return [str(item) for item in value]
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return []
    raise DataError(f"{key}: row {row} of {path} holds {type(value).__name__} {value!r} in column {column!r}, not "
                    f"a list. Give each row a list of {'words' if 'tokens' in key else 'tags'} (or a "
                    "whitespace-separated string).")


def check_tag(tag: str, where: str) -> None:
    """Refuse a tag that is neither ``O`` nor ``B-``/``I-``/``E-``/``S-`` followed by an entity type.

    Raises:
        DataError: naming the tag, where it is and the fix.
    """
    if tag == OUTSIDE:
        return
    prefix, dash, kind = tag.partition("-")
    if dash and kind and prefix in PREFIXES:
        return
    if dash and kind and prefix in ("U", "L"):
        raise DataError(f"data.path: tag {tag!r} at {where} is BILOU, which is not read. Convert the tags to IOBES "
                        "(U- -> S-, L- -> E-) or IOB2.")
    hint = " (an id: map the ids to their tag names first)" if tag.strip().lstrip("-").isdigit() else ""
    raise DataError(f"data.path: tag {tag!r} at {where} is not O and has no B-, I-, E- or S- prefix with an entity "
                    f"type{hint}. Tag entities as IOB2 (B-PER, I-PER, O) or IOBES (adds E-PER, S-PER).")


def _repair_all(splits: Sequence[List[Sentence]], iobes: bool) -> Tuple[List[List[Sentence]], List[str]]:
    fixes: List[str] = []
    repaired = []
    for split in splits:
        out = []
        for sentence in split:
            tags, changes = repair(sentence.tags, iobes)
            fixes.extend(f"{change} at {sentence.where(index)}" for index, change in changes)
            out.append(dataclasses.replace(sentence, tags=tuple(tags)) if changes else sentence)
        repaired.append(out)
    return repaired, fixes


def repair(tags: Sequence[str], iobes: bool) -> Tuple[List[str], List[Tuple[int, str]]]:
    """The tags as a valid IOB2 (or IOBES) sequence, and each changed tag as ``(word, "I-PER after O -> B-PER")``.

    An ``I-X`` (IOBES: or ``E-X``) that does not continue an entity of type X starts one: ``B-X`` (``S-X``).
    Under IOBES, a ``B-X`` (``I-X``) that the next tag does not continue ends its entity: ``S-X`` (``E-X``).
    """
    fixed = list(tags)
    why: Dict[int, List[str]] = {}
    for i, tag in enumerate(fixed):
        prefix, kind = tag[0], tag[2:]
        previous = fixed[i - 1] if i else OUTSIDE
        if prefix in "IE" and previous not in (f"B-{kind}", f"I-{kind}"):
            fixed[i] = ("B-" if prefix == "I" else "S-") + kind
            why[i] = [f"after {previous}"]
    if iobes:
        for i, tag in enumerate(fixed):
            prefix, kind = tag[0], tag[2:]
            following = fixed[i + 1] if i + 1 < len(fixed) else OUTSIDE
            if prefix in "BI" and following not in (f"I-{kind}", f"E-{kind}"):
                fixed[i] = ("S-" if prefix == "B" else "E-") + kind
                why.setdefault(i, []).append(f"before {following}")
    return fixed, [(i, f"{tags[i]} {' and '.join(reasons)} -> {fixed[i]}") for i, reasons in sorted(why.items())]


def _fix_note(fixes: Sequence[str], scheme: str) -> str:
    if not fixes:
        return ""
    what = "an I- tag that starts an entity became B-" if scheme == "IOB2" else \
        "tags that start or end an entity became B-/S- or E-/S-"
    return f"{len(fixes)} tag{'s' if len(fixes) > 1 else ''} fixed to valid {scheme} ({what}), e.g. {fixes[0]}"
