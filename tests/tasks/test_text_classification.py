"""Text data: formats, column checks, stratified split, subsample, tokenise-once cache, regression and pairs."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from finesweep.config import DataConfig, ExperimentConfig
from finesweep.config.compose import compose
from finesweep.config.space import parse_space
from finesweep.errors import ConfigError, DataError
from finesweep.tasks import PreparedData, Task, get, preparation, text_classification
from finesweep.tasks.data import read_table
from finesweep.tasks.text_classification import TextClassification, TextRegression


def check(data: DataConfig) -> Task:
    """What preflight reads of a data file: its task (``data.task: auto`` decides), or the error."""
    return get(data.task).inspect(data).task


def prepare(config: ExperimentConfig) -> PreparedData:
    return get(config.data.task).prepare(config)


@pytest.fixture()
def config(tiny_model: Path, tiny_csv: Path) -> ExperimentConfig:
    return compose("demo", [f"model.name_or_path={tiny_model}", f"data.path={tiny_csv}", "data.label_column=label",
                            "data.max_samples=null", "data.max_length=16"]).config


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet", ".tsv"])
def test_reads_every_format(suffix: str, tiny_csv: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(tiny_csv)
    path = tmp_path / f"d{suffix}"
    {".csv": lambda: frame.to_csv(path, index=False), ".tsv": lambda: frame.to_csv(path, sep="\t", index=False),
     ".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
     ".parquet": lambda: frame.to_parquet(path)}[suffix]()
    read = read_table(DataConfig(path=str(path), label_column="label"), {"data.label_column": "label"})
    assert list(read["label"]) == list(frame["label"])


def test_undecodable_bytes_are_replaced_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes(b"text,label\n" + b"caf\xe9 ok,a\n" * 5 + b"fine,b\n" * 5)
    assert len(read_table(DataConfig(path=str(path), label_column="label"), {})) == 10


@pytest.mark.parametrize("change,message", [
    ({"path": "/nonexistent/x.csv"}, r"data\.path: file not found, got /nonexistent/x\.csv\. Point data\.path at"),
    ({"text_column": "tweet"}, r"data\.text_column: column 'tweet' not in .*tiny\.csv \(columns: text, label\)\. "
                               r"Set data\.text_column to one of them\."),
    ({"label_column": "sentiment"}, r"data\.label_column: column 'sentiment' not in"),
    ({"text_pair_column": "hypothesis"}, r"data\.text_pair_column: column 'hypothesis' not in"),
], ids=["missing-file", "missing-text", "missing-label", "missing-pair"])
def test_bad_data_is_a_clear_error(change: dict, message: str, tiny_csv: Path) -> None:
    cfg = dataclasses.replace(DataConfig(path=str(tiny_csv), label_column="label"), **change)
    with pytest.raises(DataError, match=message):
        check(cfg)


def test_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "d.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match=r"data\.path: unknown file type '\.xlsx'"):
        check(DataConfig(path=str(path)))


def test_split_is_stratified_disjoint_and_seeded(config: ExperimentConfig, tiny_csv: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(tiny_csv)
    frame.insert(0, "row_id", range(len(frame)))  # identifies each row, whatever its text
    path = tmp_path / "ids.csv"
    frame.to_csv(path, index=False)
    cfg = dataclasses.replace(config.data, path=str(path))

    splits = TextClassification().split_rows(cfg)
    ids = {name: set(rows["row_id"]) for name, rows in splits.items()}
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    assert ids["train"] | ids["val"] | ids["test"] == set(range(240)), "every row lands in exactly one split"
    assert (len(ids["train"]), len(ids["val"]), len(ids["test"])) == (192, 24, 24)
    for rows in splits.values():
        counts = rows["label"].value_counts()
        assert counts.max() - counts.min() <= 1, "each class keeps its share in every split"

    again = TextClassification().split_rows(cfg)
    assert again["val"]["row_id"].tolist() == splits["val"]["row_id"].tolist(), "same seed, same split"
    reseeded = TextClassification().split_rows(dataclasses.replace(cfg, seed=1))
    assert set(reseeded["val"]["row_id"]) != ids["val"] and set(reseeded["test"]["row_id"]) != ids["test"]

    encoded = prepare(dataclasses.replace(config, data=cfg))  # the tokenised splits are those same rows
    names = encoded.label_names
    for name, split in (("train", encoded.train), ("val", encoded.val), ("test", encoded.test)):
        assert [names[i] for i in split.labels] == splits[name]["label"].tolist()


def test_subsample_keeps_class_balance(config: ExperimentConfig) -> None:
    small = dataclasses.replace(config, data=dataclasses.replace(config.data, max_samples=60))
    encoded = prepare(small)
    total = np.concatenate([encoded.train.labels, encoded.val.labels, encoded.test.labels])
    assert len(total) == 60 and set(np.bincount(total)) == {20}


def test_tokenised_once_per_variant(config: ExperimentConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    params = parse_space({"data.max_length": {"distribution": "categorical", "choices": [8, 16]},
                          "data.batch_size": {"distribution": "categorical", "choices": [8, 16, 32]}}, config)
    calls = []
    real = text_classification._tokenise
    monkeypatch.setattr(text_classification, "_tokenise",
                        lambda frame, cfg: calls.append(cfg.data.max_length) or real(frame, cfg))
    cache = preparation.prepare_all(config, params)
    assert sorted(calls) == [8, 16], "batch size does not change tokenisation; each max_length is tokenised once"
    from finesweep.config.overrides import with_overrides
    for length in (8, 16):
        for batch in (8, 16, 32):
            variant = cache.for_config(with_overrides(config, {"data.max_length": length, "data.batch_size": batch}))
            assert variant.train.features["input_ids"].shape[1] == length


def test_model_without_tokenizer_is_a_clear_error(config: ExperimentConfig, tmp_path: Path) -> None:
    broken = dataclasses.replace(config, model=dataclasses.replace(config.model, name_or_path=str(tmp_path)))
    with pytest.raises(ConfigError, match=r"model\.name_or_path: cannot load a tokenizer from '.*'.*\. Point it at "
                                          r"a Hugging Face model folder"):
        prepare(broken)


def write_regression_csv(path: Path, rows: int = 120) -> Path:
    import random

    rng = random.Random(0)
    lines = ["premise,hypothesis,score"]
    for i in range(rows):
        good = rng.randint(0, 3)
        hypothesis = "the day was nice" if i % 2 else "sad"
        lines.append(f"{' '.join(['good'] * good + ['movie'])},{hypothesis},{good / 3 + 0.05:.3f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_numeric_labels_make_a_regression_task_with_pairs(config: ExperimentConfig, tmp_path: Path) -> None:
    path = write_regression_csv(tmp_path / "reg.csv")
    cfg = dataclasses.replace(config, data=dataclasses.replace(
        config.data, path=str(path), text_column="premise", text_pair_column="hypothesis", label_column="score"))
    assert type(check(cfg.data)) is TextRegression
    encoded = prepare(cfg)
    assert type(encoded.task) is TextRegression and encoded.num_labels == 1 and encoded.label_names == ()
    assert encoded.train.labels.dtype == np.float32
    assert set(encoded.train.features) >= {"input_ids", "attention_mask", "token_type_ids"}
    assert (encoded.train.features["token_type_ids"] == 1).any(), "the pair is encoded as the second segment"
    with pytest.raises(ConfigError, match=r"objective\.metric: val/accuracy is not reported for a regression task, "
                                          r"got val/accuracy\. Use one of train/loss, val/loss, val/rmse, val/pearson, "
                                          r"or set data\.task=classification\."):
        preparation.check_objective("val/accuracy", TextRegression())
    forced = dataclasses.replace(cfg.data, task="classification")
    assert type(check(forced)) is TextClassification


def test_regression_on_text_labels_is_an_error(config: ExperimentConfig) -> None:
    with pytest.raises(DataError, match=r"data\.task: regression needs numeric labels, but column 'label' holds"):
        check(dataclasses.replace(config.data, task="regression"))


def test_trials_never_receive_the_test_split(config: ExperimentConfig) -> None:
    cache = preparation.prepare_all(config, ())
    shipped = cache.without_test()
    assert all(v.test is None for v in shipped.variants.values())
    assert all(v.test is not None and len(v.test) for v in cache.variants.values())


@pytest.mark.parametrize("content,message", [
    (b"", r"cannot read .*empty\.csv as csv \(EmptyDataError: No columns to parse from file\)\. Check that the file "
          r"is valid csv in utf-8\."),
    (b"text,label\n\"unclosed,a\n", r"cannot read .*empty\.csv as csv \(ParserError: "),
], ids=["empty", "unclosed-quote"])
def test_unreadable_csv_is_one_line(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"^data\.path: " + message) as caught:
        check(DataConfig(path=str(path)))
    assert "\n" not in str(caught.value)


def test_broken_parquet_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(DataError, match=r"data\.path: cannot read .*broken\.parquet as parquet \(Arrow\w*: .*\)\. "
                                        r"Check that the file is valid parquet\.$"):
        check(DataConfig(path=str(path)))


def test_reader_failure_without_a_message_is_still_one_line(tiny_csv: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise ValueError()  # str(exc) == "": the old splitlines()[0] raised IndexError here

    monkeypatch.setattr(pd, "read_csv", fail)
    with pytest.raises(DataError, match=r"data\.path: cannot read .*tiny\.csv as csv \(ValueError\)\. Check that"):
        check(DataConfig(path=str(tiny_csv)))


def test_unknown_encoding_is_refused_by_the_config(tiny_csv: Path) -> None:
    with pytest.raises(ConfigError, match=r"^data\.encoding must be a text encoding Python knows, got 'utf-99'\."):
        DataConfig(path=str(tiny_csv), encoding="utf-99")


@pytest.mark.parametrize("task,expected", [
    ("classification", r"^192/24/24 train/val/test rows, 3-class classification \(negative, neutral, positive\)$"),
    ("regression", r"^96/12/12 train/val/test rows, regression, target mean 0\.\d+, std 0\.\d+$"),
])
def test_describe_says_what_the_task_is(config: ExperimentConfig, tmp_path: Path, task: str, expected: str) -> None:
    if task == "regression":
        path = write_regression_csv(tmp_path / "reg.csv")
        config = dataclasses.replace(config, data=dataclasses.replace(
            config.data, path=str(path), text_column="premise", text_pair_column="hypothesis", label_column="score"))
    encoded = prepare(config)
    assert re.match(expected, encoded.describe()), encoded.describe()
    if task == "regression":
        targets = np.concatenate([encoded.train.labels, encoded.val.labels, encoded.test.labels])
        assert f"target mean {targets.mean():.3g}, std {targets.std():.3g}" in encoded.describe()
        assert "classes" not in encoded.describe()
