"""Token classification (NER): reading and checking tagged data, first-sub-token labels, long sentences in pieces,
entity metrics against seqeval, the served model, and a real fit of a tiny BERT."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import json
import logging
import random
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Sequence, Tuple

import numpy as np
import pandas as pd
import pytest
import torch
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities

from finesweep.config import DataConfig, ExperimentConfig
from finesweep.config.compose import compose
from finesweep.errors import ConfigError, DataError
from finesweep.tasks import PreparedData, Split, get
from finesweep.tasks import token_predictor as served_file
from finesweep.tasks.token_classification import TokenClassification, TokenData, load_tokenizer, plan_pieces
from finesweep.tasks.token_data import read_tagged, repair
from finesweep.tasks.token_metrics import EntityScores, TokenAccuracy
from ner_data import (
    build_byte_level_tokenizer,
    build_tiny_ner_bert,
    make_sentences,
    write_conll,
    write_jsonl,
    write_parquet,
)

TASK = TokenClassification()


@pytest.fixture(scope="module")
def ner_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_ner_bert(tmp_path_factory.mktemp("models") / "tiny-ner-bert")


@pytest.fixture(scope="module")
def conll(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_conll(tmp_path_factory.mktemp("data") / "ner.conll", make_sentences(200, seed=0))


def data_config(path: Path, **change: Any) -> DataConfig:
    return DataConfig(path=str(path), task="token_classification", **change)


def ner_config(model: Path, path: Path, *overrides: str) -> ExperimentConfig:
    """The shipped NER sweep on the tiny model and the given data."""
    return compose("ner", [f"model.name_or_path={model}", f"data.path={path}", *overrides]).config


def sentences_of(split: Sequence[Any]) -> List[Tuple[List[str], List[str]]]:
    return [(list(s.words), list(s.tags)) for s in split]


# --- reading -----------------------------------------------------------------------------------------------------


def test_reads_conll_with_docstart_blank_lines_and_extra_columns(tmp_path: Path) -> None:
    sentences = make_sentences(50, seed=1)
    for columns, docstart in ((2, False), (4, True)):
        path = write_conll(tmp_path / f"c{columns}.conll", sentences, docstart=docstart, columns=columns)
        tagged = read_tagged(data_config(path, val_fraction=0.2, test_fraction=0.2))
        assert tagged.sizes == (30, 10, 10) and tagged.scheme == "IOB2" and tagged.fixed == 0
        read = sorted(sentences_of([s for split in tagged.splits for s in split]))
        assert read == sorted((list(w), list(t)) for w, t in sentences), "every sentence once, words and tags intact"
    assert tagged.tag_names == ("O", "B-LOC", "B-ORG", "B-PER", "I-LOC", "I-ORG", "I-PER"), "O first, then sorted"
    first = tagged.splits[0][0]
    lines = path.read_text().splitlines()
    assert lines[first.line - 1].split()[0] == first.words[0], "a sentence knows the line of its first word"


@pytest.mark.parametrize("writer", [write_jsonl, write_parquet], ids=["jsonl", "parquet"])
def test_reads_tables_of_word_and_tag_lists(writer: Any, tmp_path: Path) -> None:
    sentences = make_sentences(40, seed=2)
    path = writer(tmp_path / f"t.{'jsonl' if writer is write_jsonl else 'parquet'}", sentences, "words", "ner")
    tagged = read_tagged(data_config(path, tokens_column="words", tags_column="ner"))
    assert sum(tagged.sizes) == 40
    assert sorted(sentences_of([s for split in tagged.splits for s in split])) == sorted(sentences)


def test_csv_table_reads_whitespace_separated_strings(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    pd.DataFrame({"tokens": [" ".join(w) for w, _ in make_sentences(20)],
                  "tags": [" ".join(t) for _, t in make_sentences(20)]}).to_csv(path, index=False)
    tagged = read_tagged(data_config(path))
    assert sorted(sentences_of([s for split in tagged.splits for s in split])) == sorted(make_sentences(20))


def test_a_folder_of_splits_is_used_as_given(tmp_path: Path) -> None:
    write_conll(tmp_path / "train.conll", make_sentences(30, seed=3))
    write_jsonl(tmp_path / "dev.jsonl", make_sentences(7, seed=4))
    write_conll(tmp_path / "test.iob", make_sentences(5, seed=5))
    tagged = read_tagged(data_config(tmp_path))
    assert tagged.sizes == (30, 7, 5)
    assert sentences_of(tagged.splits[1]) == make_sentences(7, seed=4), "the dev file is the validation split"


def test_a_folder_without_test_file_holds_out_test_fraction_of_train(tmp_path: Path) -> None:
    write_conll(tmp_path / "train.conll", make_sentences(40, seed=3))
    write_conll(tmp_path / "validation.txt", make_sentences(6, seed=4))
    tagged = read_tagged(data_config(tmp_path, test_fraction=0.25, seed=7))
    assert tagged.sizes == (30, 6, 10)
    train, _, test = (sentences_of(split) for split in tagged.splits)
    assert sorted(train + test) == sorted(make_sentences(40, seed=3))
    assert sentences_of(read_tagged(data_config(tmp_path, test_fraction=0.25, seed=7)).splits[2]) == test


def test_one_file_is_subsampled_then_split_by_sentence_with_a_seed(conll: Path) -> None:
    tagged = read_tagged(data_config(conll, max_samples=100, seed=3))
    assert tagged.sizes == (80, 10, 10)
    again = read_tagged(data_config(conll, max_samples=100, seed=3))
    assert sentences_of(again.splits[1]) == sentences_of(tagged.splits[1])
    other = read_tagged(data_config(conll, max_samples=100, seed=4))
    assert sentences_of(other.splits[1]) != sentences_of(tagged.splits[1])


BAD_CONLL = {
    "no-prefix": ("anna B-PER\nsmith PER\n", r"data\.path: tag 'PER' at line 2 of bad\.conll is not O and has no B-, "
                                             r"I-, E- or S- prefix with an entity type\. Tag entities as IOB2"),
    "bilou": ("anna U-PER\n", r"data\.path: tag 'U-PER' at line 1 of bad\.conll is BILOU, which is not read\. "
                              r"Convert the tags to IOBES \(U- -> S-, L- -> E-\) or IOB2\."),
    "one-column": ("-DOCSTART- -X- O\n\nanna B-PER\nsmith\n", r"data\.path: line 4 of .*bad\.conll has one column "
                                                               r"\('smith'\); a CoNLL line needs the word first and "
                                                               r"its tag last"),
    "type-less": ("anna B-\n", r"tag 'B-' at line 1 of bad\.conll is not O and has no B-, I-, E- or S- prefix"),
    "only-o": ("it O\nwas O\n", r"data\.path: token classification needs at least one entity tag \(B-PER, \.\.\.\), "
                                r"got only O tags in .*bad\.conll\. Check data\.tags_column"),
    "empty": ("\n\n", r"data\.path: no tagged sentences in .*bad\.conll\."),
}


@pytest.mark.parametrize("name", list(BAD_CONLL))
def test_bad_conll_is_one_line_naming_the_line(name: str, tmp_path: Path) -> None:
    content, message = BAD_CONLL[name]
    (tmp_path / "bad.conll").write_text(content)
    with pytest.raises(DataError, match=message) as caught:
        TASK.inspect(data_config(tmp_path / "bad.conll"))
    assert "\n" not in str(caught.value)


BAD_ROWS = {
    "mismatch": ({"tokens": [["anna", "smith"]], "tags": [["B-PER"]]},
                 r"data\.path: row 1 of .*bad\.jsonl has 2 words in 'tokens' but 1 tags in 'tags'; every word needs "
                 r"exactly one tag\. Fix row 1"),
    "tag-ids": ({"tokens": [["anna"]], "tags": [[3]]},
                r"tag '3' at row 1 of bad\.jsonl \(word 1\) is not O .*\(an id: map the ids to their tag names "
                r"first\)"),
    "not-a-list": ({"tokens": [5], "tags": [["O"]]},
                   r"data\.tokens_column: row 1 of .*bad\.jsonl holds int 5 in column 'tokens', not a list\."),
    "missing-column": ({"words": [["anna"]], "tags": [["B-PER"]]},
                       r"data\.tokens_column: column 'tokens' not in .*bad\.jsonl \(columns: words, tags\)"),
}


@pytest.mark.parametrize("name", list(BAD_ROWS))
def test_bad_table_rows_are_one_line_naming_the_row(name: str, tmp_path: Path) -> None:
    content, message = BAD_ROWS[name]
    pd.DataFrame(content).to_json(tmp_path / "bad.jsonl", orient="records", lines=True)
    with pytest.raises(DataError, match=message):
        TASK.inspect(data_config(tmp_path / "bad.jsonl"))


def test_bad_paths_and_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.path: file or folder not found, got .*nope\.conll\. Point data\.path "
                                        r"at a CoNLL file"):
        TASK.inspect(data_config(tmp_path / "nope.conll"))
    (tmp_path / "x.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"data\.path: unknown file type '\.xlsx' for token classification"):
        TASK.inspect(data_config(tmp_path / "x.xlsx"))
    folder = tmp_path / "splits"
    folder.mkdir()
    write_conll(folder / "train.conll", make_sentences(10))
    with pytest.raises(DataError, match=r"data\.path: the folder .*splits has no val/dev/validation file \(e\.g\. "
                                        r"val\.conll or \.jsonl\)\. Put train\.<ext>, val\.<ext>"):
        TASK.inspect(data_config(folder))
    write_conll(folder / "dev.conll", make_sentences(3))
    write_jsonl(folder / "val.jsonl", make_sentences(3))
    with pytest.raises(DataError, match=r"the folder .*splits has 2 val files \(val\.jsonl, dev\.conll\)\. Keep one"):
        TASK.inspect(data_config(folder))


# --- tag schemes and repairs ---------------------------------------------------------------------------------------


def test_iob1_style_starts_are_fixed_counted_and_reported(ner_model: Path, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    sentences = make_sentences(60, seed=6)
    sentences[0] = (["mr", "anna", "smith", "lives", "in", "paris"], ["O", "I-PER", "I-PER", "O", "O", "I-LOC"])
    sentences[1] = (["anna", "berlin"], ["B-PER", "I-LOC"])  # an I- of another type starts an entity too
    path = write_conll(tmp_path / "iob1.conll", sentences)
    with caplog.at_level(logging.WARNING, logger="finesweep.tasks"):
        tagged = read_tagged(data_config(path))
    assert tagged.fixed == 3
    note = "3 tags fixed to valid IOB2 (an I- tag that starts an entity became B-), e.g. I-PER after O -> B-PER at " \
           "line 4 of iob1.conll"
    assert tagged.fix_note == note
    assert [r.getMessage() for r in caplog.records] == [f"{path}: {note}"], "one warning, in finesweep's task logger"
    fixed = {tuple(s.words): list(s.tags) for split in tagged.splits for s in split}
    assert fixed[tuple(sentences[0][0])] == ["O", "B-PER", "I-PER", "O", "O", "B-LOC"]
    assert fixed[("anna", "berlin")] == ["B-PER", "B-LOC"]
    data = TASK.prepare(ner_config(ner_model, path))
    assert note in data.describe()


@pytest.mark.parametrize("tags,iobes,expected", [
    (["O", "I-PER", "I-PER", "O"], False, ["O", "B-PER", "I-PER", "O"]),
    (["B-PER", "I-LOC", "I-LOC"], False, ["B-PER", "B-LOC", "I-LOC"]),
    (["I-PER", "E-PER", "O"], True, ["B-PER", "E-PER", "O"]),
    (["B-PER", "O", "E-LOC"], True, ["S-PER", "O", "S-LOC"]),
    (["B-PER", "I-PER", "I-PER"], True, ["B-PER", "I-PER", "E-PER"]),
    (["S-PER", "I-PER", "B-LOC", "B-LOC", "E-LOC"], True, ["S-PER", "S-PER", "S-LOC", "B-LOC", "E-LOC"]),
    (["O", "I-PER", "O"], True, ["O", "S-PER", "O"]),
    (["B-PER", "E-PER", "S-LOC", "O"], True, ["B-PER", "E-PER", "S-LOC", "O"]),
], ids=["iob1-start", "type-change", "iobes-i-start", "iobes-b-alone", "iobes-i-end", "iobes-mixed",
       "iobes-i-alone", "iobes-valid"])
def test_repairs_make_valid_sequences_and_keep_the_entities_seqeval_reads(tags: List[str], iobes: bool,
                                                                          expected: List[str]) -> None:
    fixed, changes = repair(tags, iobes)
    assert fixed == expected
    assert [i for i, _ in changes] == [i for i, (a, b) in enumerate(zip(tags, expected, strict=True)) if a != b]
    assert all(text.startswith(tags[i]) and text.endswith(f"-> {expected[i]}") for i, text in changes)
    assert get_entities(fixed) == get_entities(tags), "a repair never changes the entities of seqeval's default mode"
    if iobes:
        from seqeval.scheme import IOBES, Entities

        strict = Entities([fixed], IOBES).entities[0]
        assert [(e.tag, e.start, e.end - 1) for e in strict] == get_entities(fixed), "valid under strict IOBES too"


def test_iobes_is_detected_from_its_prefixes(tmp_path: Path) -> None:
    path = tmp_path / "iobes.conll"
    path.write_text("mr O\nanna B-PER\nsmith E-PER\nin O\nparis S-LOC\n\nberlin S-LOC\n\nit O\n")
    tagged = read_tagged(data_config(path, val_fraction=0.34, test_fraction=0.0))
    assert tagged.scheme == "IOBES" and tagged.tag_names == ("O", "B-PER", "E-PER", "S-LOC")


# --- encoding ------------------------------------------------------------------------------------------------------


def test_labels_sit_exactly_on_each_words_first_sub_token(ner_model: Path, conll: Path) -> None:
    config = ner_config(ner_model, conll, "data.max_length=32")
    data = TASK.prepare(config)
    tagged = read_tagged(config.data)
    tokenizer = load_tokenizer(str(ner_model))
    lookup = {tag: i for i, tag in enumerate(data.label_names)}
    split_words = 0
    for split, sentences in zip((data.train, data.val, data.test), tagged.splits, strict=True):
        assert split is not None and len(split) == len(sentences), "every sentence fits: one row each"
        for row, sentence in enumerate(sentences):
            encoded = tokenizer(list(sentence.words), is_split_into_words=True)
            word_ids = encoded.word_ids()
            expected = np.full(32, -100)
            for position, word in enumerate(word_ids):
                if word is not None and (position == 0 or word_ids[position - 1] != word):
                    expected[position] = lookup[sentence.tags[word]]
            split_words += sum(1 for p, w in enumerate(word_ids) if w is not None and p and word_ids[p - 1] == w)
            assert split.labels[row].tolist() == expected.tolist(), f"row {row}: {sentence.words}"
            assert split.features["input_ids"][row, :len(word_ids)].tolist() == encoded["input_ids"]
    assert split_words > 50, "the data exercises words of several sub-tokens"
    assert data.train.labels.dtype == np.int64 and data.train.features["input_ids"].dtype == np.int32
    assert set(data.train.features) == {"input_ids", "attention_mask", "token_type_ids"}


def test_long_sentences_are_split_into_pieces_and_no_word_is_dropped(ner_model: Path, tmp_path: Path) -> None:
    rng = random.Random(0)
    parts = make_sentences(120, seed=8)
    # sentences of 2 to 6 short ones: many are longer than 16 tokens; one holds a word of 16 sub-tokens
    long: List[Tuple[List[str], List[str]]] = []
    while parts:
        count = rng.randint(2, 6)
        taken, parts = parts[:count], parts[count:]
        long.append(([w for s in taken for w in s[0]], [t for s in taken for t in s[1]]))
    long[0] = (["mr", "od" + "u" * 15, "lives", "in", "paris"], ["O", "B-PER", "O", "O", "B-LOC"])
    path = write_conll(tmp_path / "long.conll", long)
    config = ner_config(ner_model, path, "data.max_length=16", "data.val_fraction=0.2")
    data = TASK.prepare(config)
    assert isinstance(data, TokenData) and data.notes is not None
    tagged = read_tagged(config.data)
    lookup = {tag: i for i, tag in enumerate(data.label_names)}
    for split, sentences in zip((data.train, data.val, data.test), tagged.splits, strict=True):
        assert split is not None
        assert int((split.features["attention_mask"].sum(axis=1) <= 16).sum()) == len(split), "pieces fit"
        labels = [split.labels[row][split.labels[row] != -100].tolist() for row in range(len(split))]
        flat = [label for row in labels for label in row]
        assert flat == [lookup[t] for s in sentences for t in s.tags], "every word labelled once, in order"
        starts = [data.label_names[row[0]] for row in labels]
        assert not [s for s in starts if s.startswith("I-")], "no piece starts inside an entity"
    notes = data.notes
    assert notes.long_sentences > 10 and notes.pieces > notes.long_sentences * 2 - 1
    assert (notes.long_words, notes.unlabelled_words, notes.cut_entities) == (1, 0, 0)
    assert notes.words == sum(len(s.words) for split in tagged.splits for s in split)
    described = data.describe()
    assert f"{notes.long_sentences} sentences longer than 16 tokens were split into {notes.pieces} pieces; no word " \
           "dropped; 1 word longer than a piece cut to the sub-tokens that fit" in described


@pytest.mark.parametrize("sizes,can_start,room,spans,cut", [
    ([1, 1, 1], [True] * 3, 5, [(0, 3)], 0),
    ([2, 2, 2, 2], [True] * 4, 5, [(0, 2), (2, 4)], 0),
    ([1, 1, 1, 1, 1], [True, False, True, False, False], 4, [(0, 2), (2, 5)], 0),
    ([1, 1, 1, 1, 1], [True, False, False, False, False], 2, [(0, 2), (2, 4), (4, 5)], 2),
    ([1, 9, 1], [True, True, True], 4, [(0, 1), (1, 2), (2, 3)], 0),
    ([0, 2, 0, 2], [True] * 4, 2, [(0, 3), (3, 4)], 0),
], ids=["fits", "greedy", "back-off-to-entity-start", "entity-longer-than-piece", "long-word", "empty-words"])
def test_plan_pieces(sizes: List[int], can_start: List[bool], room: int, spans: List[Tuple[int, int]],
                     cut: int) -> None:
    assert plan_pieces(sizes, can_start, room) == (spans, cut)


def test_byte_level_tokenizers_read_pre_split_words_as_in_running_text(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    folder = build_byte_level_tokenizer(tmp_path / "bpe")
    words = ["mr", "anna", "smith", "lives", "in", "paris"]
    plain = AutoTokenizer.from_pretrained(folder)
    loaded = load_tokenizer(str(folder))
    in_text = plain(" " + " ".join(words), add_special_tokens=False).tokens()  # each word after a space
    assert loaded(words, is_split_into_words=True, add_special_tokens=False).tokens() == in_text
    assert plain(words, is_split_into_words=True, add_special_tokens=False).tokens() != in_text, "the unfixed one"


def test_a_slow_tokenizer_or_none_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.name_or_path: cannot load a tokenizer from '.*'"):
        load_tokenizer(str(tmp_path))


# --- training pieces -----------------------------------------------------------------------------------------------


def test_collate_cuts_labels_to_the_features_width() -> None:
    mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]], dtype=np.int32)
    labels = np.array([[-100, 3, -100, -100, -100, -100], [-100, 1, -100, -100, -100, -100]], dtype=np.int64)
    split = Split({"input_ids": mask * 7, "attention_mask": mask}, labels)
    batch = TASK.collate(split, [0, 1])
    assert batch["features"]["input_ids"].shape == batch["labels"].shape == (2, 3)
    assert batch["labels"].tolist() == [[-100, 3, -100], [-100, 1, -100]]


def test_loss_skips_unlabelled_positions() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3)
    labels = torch.tensor([[-100, 2, 0, -100], [-100, 1, -100, -100]])
    kept = [(0, 1), (0, 2), (1, 1)]
    by_hand = -sum(torch.log_softmax(logits[b, p], dim=-1)[labels[b, p]] for b, p in kept) / 3
    assert float(TASK.loss(logits, labels)) == pytest.approx(float(by_hand), rel=1e-5)
    assert TASK.predictions(logits).shape == (2, 4)


# --- metrics against seqeval ---------------------------------------------------------------------------------------

IOB2 = ("O", "B-LOC", "B-PER", "I-LOC", "I-PER")
IOBES_TAGS = ("O", "B-LOC", "B-PER", "E-LOC", "E-PER", "I-LOC", "I-PER", "S-LOC", "S-PER")


def random_batches(names: Sequence[str], seed: int, batches: int = 4) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(predictions, labels) of random tag ids at random widths, with unlabelled (-100) positions between words."""
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(batches):
        rows, width = int(rng.integers(1, 6)), int(rng.integers(2, 14))
        labels = rng.integers(0, len(names), size=(rows, width))
        # mostly O, so entities are runs of a few words
        labels[rng.random((rows, width)) < 0.4] = 0
        labels[rng.random((rows, width)) < 0.3] = -100
        predictions = np.where(rng.random((rows, width)) < 0.5, labels, rng.integers(0, len(names), (rows, width)))
        predictions[labels == -100] = rng.integers(0, len(names), int((labels == -100).sum()))
        found.append((np.where(predictions < 0, 0, predictions), labels))
    return found


def as_tags(batches: Sequence[Tuple[np.ndarray, np.ndarray]], names: Sequence[str]
            ) -> Tuple[List[List[str]], List[List[str]]]:
    """seqeval's input: each row's labelled positions as tag strings."""
    gold, predicted = [], []
    for predictions, labels in batches:
        for p_row, l_row in zip(predictions, labels, strict=True):
            keep = l_row != -100
            gold.append([names[i] for i in l_row[keep]])
            predicted.append([names[i] for i in p_row[keep]])
    return gold, predicted


def computed(names: Sequence[str], batches: Sequence[Tuple[np.ndarray, np.ndarray]]) -> Dict[str, float]:
    metrics = TASK.metrics(PreparedData(Split({}, np.zeros(0)), Split({}, np.zeros(0)), None, TASK, tuple(names)),
                           prefix="val/")
    for predictions, labels in batches:
        metrics.update(torch.as_tensor(predictions), torch.as_tensor(labels))
    return {name: float(value) for name, value in metrics.compute().items()}


@pytest.mark.parametrize("names", [IOB2, IOBES_TAGS], ids=["iob2", "iobes"])
@pytest.mark.parametrize("seed", range(8))
def test_entity_scores_match_seqeval_default_mode_on_random_tags(names: Sequence[str], seed: int) -> None:
    batches = random_batches(names, seed)
    gold, predicted = as_tags(batches, names)
    got = computed(names, batches)
    assert set(got) == {"val/entity_f1", "val/entity_precision", "val/entity_recall", "val/token_accuracy"}
    with quiet():
        assert got["val/entity_f1"] == pytest.approx(f1_score(gold, predicted), abs=1e-6)
        assert got["val/entity_precision"] == pytest.approx(precision_score(gold, predicted), abs=1e-6)
        assert got["val/entity_recall"] == pytest.approx(recall_score(gold, predicted), abs=1e-6)
    labelled = [(p, g) for ps, gs in zip(predicted, gold, strict=True) for p, g in zip(ps, gs, strict=True)]
    assert got["val/token_accuracy"] == pytest.approx(sum(p == g for p, g in labelled) / len(labelled), abs=1e-6)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns on 0/0; both sides give 0 there
        yield


HAND = [
    # gold, predicted, (precision, recall, f1) by hand
    ([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-LOC"]], (1.0, 1.0, 1.0)),
    ([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "O", "O", "B-LOC"]], (0.5, 0.5, 0.5)),
    ([["O", "B-PER", "I-PER"]], [["O", "I-PER", "I-PER"]], (1.0, 1.0, 1.0)),  # conlleval: I- after O starts
    ([["B-LOC", "I-LOC"]], [["B-LOC", "I-PER"]], (0.0, 0.0, 0.0)),
    ([["O", "O"]], [["O", "O"]], (0.0, 0.0, 0.0)),  # nothing to find, nothing found: 0, as seqeval says
    ([["O", "B-PER"]], [["O", "O"]], (0.0, 0.0, 0.0)),
    ([["O", "O"], ["B-LOC"]], [["B-PER", "O"], ["B-LOC"]], (0.5, 1.0, 2 / 3)),
    ([["B-PER", "E-PER", "S-LOC"]], [["B-PER", "E-PER", "S-LOC"]], (1.0, 1.0, 1.0)),
    ([["B-PER", "E-PER", "S-LOC"]], [["B-PER", "I-PER", "S-LOC"]], (1.0, 1.0, 1.0)),  # default mode: I then S ends
    ([["S-PER", "S-PER"]], [["B-PER", "E-PER"]], (0.0, 0.0, 0.0)),
]


@pytest.mark.parametrize("gold,predicted,expected", HAND, ids=[str(i) for i in range(len(HAND))])
def test_entity_scores_on_hand_made_sequences(gold: List[List[str]], predicted: List[List[str]],
                                              expected: Tuple[float, float, float]) -> None:
    names = IOBES_TAGS
    width = max(len(row) for row in gold) + 1
    labels = np.full((len(gold), width), -100)
    predictions = np.zeros((len(gold), width), dtype=np.int64)
    for row, (g, p) in enumerate(zip(gold, predicted, strict=True)):
        # one position per word; the trailing position stays unlabelled, as padding is
        labels[row, :len(g)] = [names.index(t) for t in g]
        predictions[row, :len(p)] = [names.index(t) for t in p]
    got = computed(names, [(predictions, labels)])
    assert (got["val/entity_precision"], got["val/entity_recall"], got["val/entity_f1"]) == pytest.approx(expected)
    with quiet():
        seqeval = (precision_score(gold, predicted), recall_score(gold, predicted), f1_score(gold, predicted))
    assert seqeval == pytest.approx(expected), "the hand values are seqeval's default mode"


def test_strict_iobes_mode_differs_and_is_not_what_is_matched() -> None:
    from seqeval.scheme import IOBES

    gold, predicted = [["B-PER", "E-PER", "S-LOC"]], [["B-PER", "I-PER", "S-LOC"]]
    assert f1_score(gold, predicted, mode="strict", scheme=IOBES) == pytest.approx(2 / 3)
    names = IOBES_TAGS
    labels = np.array([[names.index(t) for t in gold[0]]])
    predictions = np.array([[names.index(t) for t in predicted[0]]])
    assert computed(names, [(predictions, labels)])["val/entity_f1"] == pytest.approx(f1_score(gold, predicted)) == 1


def test_token_accuracy_by_hand() -> None:
    accuracy = TokenAccuracy()
    accuracy.update(torch.tensor([[0, 1, 2, 2], [1, 1, 0, 0]]), torch.tensor([[-100, 1, 1, 2], [1, -100, 0, -100]]))
    accuracy.update(torch.tensor([[3]]), torch.tensor([[-100]]))
    assert float(accuracy.compute()) == pytest.approx(4 / 5)  # labelled: 1=1, 2!=1, 2=2, 1=1, 0=0


@pytest.mark.parametrize("seed", range(4))
def test_breakdown_matches_seqeval_classification_report(seed: int) -> None:
    names = IOB2 if seed % 2 else IOBES_TAGS
    batches = random_batches(names, seed + 100, batches=6)
    gold, predicted = as_tags(batches, names)
    data = PreparedData(Split({}, np.zeros(0)), Split({}, np.zeros(0)), None, TASK, tuple(names))
    # the module keeps test predictions as float arrays (FinetuneModule.kept)
    rows = TASK.breakdown([(p.astype(np.float32), labels) for p, labels in batches], data)
    with quiet():
        report = classification_report(gold, predicted, output_dict=True)
    expected = {k: v for k, v in report.items() if k not in ("macro avg", "weighted avg")}
    assert [row["entity"] for row in rows] == list(expected), "the same rows, in the same order"
    for row in rows:
        theirs = expected[row["entity"]]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx(
            (theirs["precision"], theirs["recall"], theirs["f1-score"]))
        assert row["support"] == theirs["support"]


def test_counts_merge_across_processes_as_ddp_reduces_them() -> None:
    """Two ranks' states, summed (``merge_state`` applies each state's ``dist_reduce_fx``), score as one."""
    batches = random_batches(IOB2, seed=42, batches=6)
    ranks, whole = [EntityScores(IOB2), EntityScores(IOB2)], EntityScores(IOB2)
    for index, (predictions, labels) in enumerate(batches):
        ranks[index % 2].update(torch.as_tensor(predictions), torch.as_tensor(labels))
        whole.update(torch.as_tensor(predictions), torch.as_tensor(labels))
    ranks[0].merge_state(ranks[1])
    assert {k: float(v) for k, v in ranks[0].compute().items()} == {k: float(v) for k, v in whole.compute().items()}
    assert float(whole.gold.sum()) > 3


# --- the model, LoRA and a real fit --------------------------------------------------------------------------------


def test_model_gets_a_head_for_the_tags_and_lora_uses_token_cls(ner_model: Path, conll: Path) -> None:
    from finesweep.finetune.module import FinetuneModule

    config = ner_config(ner_model, conll, "finetune.strategy=lora", "finetune.lora.r=16")
    data = TASK.prepare(config)
    module = FinetuneModule.for_trial(config, data, total_steps=4)
    assert type(module.model).__name__ == "PeftModelForTokenClassification"
    batch = TASK.collate(data.train, range(8))
    outputs = module(batch["features"])
    assert outputs.shape == (*batch["labels"].shape, len(data.label_names))
    assert torch.isfinite(TASK.loss(outputs, batch["labels"]))
    model = TASK.build_model(config, data)
    assert model.config.id2label == dict(enumerate(data.label_names))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_real_fit_learns_the_entities_and_scores_them_per_type(ner_model: Path, tmp_path: Path) -> None:
    from finesweep.execution.trial import breakdown, evaluate, fit
    from finesweep.tasks.preparation import prepare_all

    path = write_conll(tmp_path / "train.conll", make_sentences(400, seed=11))
    config = ner_config(ner_model, path, "optim.lr=2e-3", "scheduler.max_epochs=4", "data.batch_size=16",
                        "data.max_length=32", "search.start_from_config=false", "trainer.precision=32-true")
    reports: List[Dict[str, float]] = []
    cache = prepare_all(config, ())
    module = fit(config, cache, lambda metrics, folder: reports.append(metrics))
    assert [m["epoch"] for m in reports] == [1.0, 2.0, 3.0, 4.0]
    assert set(TASK.objective_metrics) <= set(reports[-1])
    f1 = [m["val/entity_f1"] for m in reports]
    # The untrained head tags (almost) no entity right: epoch 1 is near 0 (0.03 on this seed); it learns them.
    assert f1[0] < 0.3 and f1[-1] > 0.9, f1
    assert reports[-1]["train/loss"] < reports[0]["train/loss"] / 3

    # The registered model's test score and its per-entity table come from the same predictions.
    weights = tmp_path / "weights"
    TASK.save_trained(module.export_model(), weights)
    data = cache.for_config(config)
    scores = evaluate(config, data, weights, "test")
    table = breakdown(config, data, weights)
    assert [row["entity"] for row in table] == ["LOC", "ORG", "PER", "micro avg"]
    assert table[-1]["f1"] == pytest.approx(scores["test/entity_f1"], abs=1e-6)
    assert table[-1]["support"] == sum(row["support"] for row in table[:-1]) > 20


# --- serving -------------------------------------------------------------------------------------------------------


class Served(NamedTuple):
    model: Any
    """``mlflow.pyfunc.load_model``'s answer."""
    config: ExperimentConfig
    package: Path
    """What was logged: the weights, the tokenizer, finesweep.json."""


@pytest.fixture(scope="module")
def served(ner_model: Path, conll: Path, tmp_path_factory: pytest.TempPathFactory) -> Served:
    """The tiny model with a fresh head, packaged and logged as the registry does, loaded back with pyfunc."""
    import mlflow

    folder = tmp_path_factory.mktemp("served")
    config = ner_config(ner_model, conll)
    data = TASK.prepare(config)
    package = folder / "package"
    TASK.save_trained(TASK.build_model(config, data), package)
    meta = TASK.serving_meta(config, data)
    TASK.package(package, str(ner_model), meta)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    try:
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(name="model", python_model=str(TASK.predictor_source()),
                                           artifacts={"model": str(package)}, signature=TASK.signature(meta),
                                           pip_requirements=list(TASK.pip_requirements))
        return Served(mlflow.pyfunc.load_model(info.model_uri), config, package)
    finally:
        mlflow.set_tracking_uri(previous)


TEXTS = ["Mr Anna Johnson lives in New York.", "The Red Cross hired mr Boris Oduya yesterday, said Elena.",
         "", "it was a quiet day", "Globex opened an office in Rio de Janeiro, said Carla Kowalski!"]


def test_the_served_model_answers_entities_with_offsets_into_the_text(served: Served,
                                                                      ner_model: Path) -> None:
    from transformers import AutoModelForTokenClassification, pipeline

    model = served.model
    answer = model.predict(pd.DataFrame({"text": TEXTS}))
    assert list(answer.columns) == ["entities"] and len(answer) == len(TEXTS)
    assert answer["entities"][2] == []
    found = 0
    for text, entities in zip(TEXTS, answer["entities"], strict=True):
        for entity in entities:
            assert set(entity) == {"entity_group", "word", "start", "end", "score"}
            assert text[entity["start"]:entity["end"]] == entity["word"] and 0 < entity["score"] <= 1
            found += 1
    assert found > 5, "a random head tags plenty of words: the grouping is exercised"
    # Hugging Face's own pipeline on the same weights (BERT splits words as \w+|[^\w\s] does) agrees
    folder = served.package
    reference = pipeline("token-classification", model=AutoModelForTokenClassification.from_pretrained(folder),
                         tokenizer=load_tokenizer(str(folder)), aggregation_strategy="first")
    for text, entities in zip(TEXTS, answer["entities"], strict=True):
        theirs = [(e["entity_group"], e["start"], e["end"], round(float(e["score"]), 4)) for e in reference(text)] \
            if text else []
        assert [(e["entity_group"], e["start"], e["end"], round(e["score"], 4)) for e in entities] == theirs, text


@pytest.mark.parametrize("names", [IOB2, IOBES_TAGS], ids=["iob2", "iobes"])
@pytest.mark.parametrize("seed", range(4))
def test_served_entities_are_the_spans_seqeval_reads(names: Sequence[str], seed: int) -> None:
    rng = random.Random(seed)
    tags = [rng.choice(names) if rng.random() < 0.6 else "O" for _ in range(40)]
    text = " ".join(f"w{i}" for i in range(40))
    words = [(m.group(), m.start(), m.end()) for m in served_file.WORD.finditer(text)]
    scores = [rng.random() for _ in tags]
    entities = served_file.group(text, words, tags, scores)
    spans = get_entities(tags)
    assert [(e["entity_group"], e["word"]) for e in entities] == \
        [(kind, " ".join(f"w{i}" for i in range(first, last + 1))) for kind, first, last in spans]
    assert [e["score"] for e in entities] == pytest.approx([np.mean(scores[a:b + 1]) for _, a, b in spans])


def test_the_served_model_answers_the_rest_servers_json(served: Served) -> None:
    """What ``mlflow models serve`` runs for a POST to /invocations, on the same loaded model."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    model, schema = served.model, served.model.metadata.get_input_schema()
    body = json.dumps({"dataframe_records": [{"text": text} for text in TEXTS]})
    response = scoring_server.invocations(body, "application/json", model, schema)  # type: ignore[no-untyped-call]
    assert response.status == 200, response.response
    predictions = json.loads(response.response)["predictions"]
    assert predictions == [{"entities": e} for e in model.predict(pd.DataFrame({"text": TEXTS}))["entities"]]
    wrong = json.dumps({"dataframe_records": [{"sentence": "x"}]})
    with pytest.raises(MlflowException, match=r"Model is missing inputs \['text'\]"):  # the server answers 400
        scoring_server.invocations(wrong, "application/json", model, schema)  # type: ignore[no-untyped-call]


def test_long_texts_are_served_in_pieces(served: Served) -> None:
    model, config = served.model, served.config
    text = " ".join(["mr anna smith lives in paris ."] * 40)  # 280 words, far beyond max_length
    entities = model.predict(pd.DataFrame({"text": [text]}))["entities"][0]
    assert all(text[e["start"]:e["end"]] == e["word"] for e in entities)
    assert max(e["end"] for e in entities) > len(text) - 10, "the text's end is tagged too"
    assert config.data.max_length < 280


def test_serving_meta_and_signature(ner_model: Path, conll: Path) -> None:
    config = ner_config(ner_model, conll, "data.max_length=48")
    names = ("O", "B-LOC", "S-LOC")
    data = PreparedData(Split({}, np.zeros(0)), Split({}, np.zeros(0)), None, TASK, names)
    meta = TASK.serving_meta(config, data)
    assert meta == {"task": "token_classification", "label_names": list(names), "max_length": 48,
                    "objective": "val/entity_f1", "scheme": "IOBES"}
    assert served_file.ServingMeta.from_json(json.dumps(meta)).label_names == names
    signature = TASK.signature(meta)
    assert signature.inputs.input_names() == ["text"] and signature.outputs.input_names() == ["entities"]
    assert json.loads(signature.to_dict()["outputs"])[0]["type"] == "array"
    example = TASK.request_example(meta)
    assert list(example["dataframe_records"][0]) == signature.inputs.input_names()


def test_the_served_file_imports_nothing_from_finesweep() -> None:
    tree = ast.parse(Path(served_file.__file__).read_text())
    imported = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert imported and not [m for m in imported if m.split(".")[0] == "finesweep"], imported


def test_package_never_writes_through_a_link(ner_model: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "tokenizer_config.json").write_text("the checkpoint's own")
    package = tmp_path / "package"
    package.mkdir()
    (package / "tokenizer_config.json").symlink_to(checkpoint / "tokenizer_config.json")
    TASK.package(package, str(ner_model), {"task": "token_classification"})
    assert (checkpoint / "tokenizer_config.json").read_text() == "the checkpoint's own"
    assert json.loads((package / "finesweep.json").read_text()) == {"task": "token_classification"}


# --- the task in finesweep ----------------------------------------------------------------------------------------


def test_the_task_is_registered_and_describes_its_data(ner_model: Path, conll: Path) -> None:
    from finesweep.tasks import registry
    from finesweep.tasks.preparation import check_objective

    assert isinstance(get("token_classification"), TokenClassification)
    assert "val/entity_f1" in registry.objective_metrics()
    check_objective("val/entity_f1", TASK)
    inspection = TASK.inspect(data_config(conll))
    assert inspection.rows == (160, 20, 20) and inspection.task.name == "token_classification"
    data = TASK.prepare(ner_config(ner_model, conll))
    assert data.describe() == ("160/20/20 train/val/test sentences, IOB2 tags of 3 entity types (LOC, ORG, PER); "
                               "every sentence fits in 128 tokens; no word dropped")
    assert dataclasses.replace(data, test=None).describe() == data.describe(), "trials' copy keeps the notes"


def test_the_ner_sweep_validates_before_anything_starts(conll: Path) -> None:
    from finesweep.config import preflight
    from finesweep.config.compose import blame

    composed = compose("ner", [f"data.path={conll}"])  # the shipped MiniLM, read offline from its package
    assert composed.config.objective.metric == "val/entity_f1" and composed.config.data.task == "token_classification"
    with blame(composed.sweep_file):
        found = preflight.check_data(composed.config, composed.params)
        preflight.check_model(composed.config, composed.params)
    assert found.rows == (160, 20, 20)
