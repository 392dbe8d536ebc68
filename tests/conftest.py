"""Fixtures: a tiny BERT saved locally and a small labelled CSV, built fresh (no downloads)."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Iterator, List

import pytest

POSITIVE = ["good", "great", "love", "happy", "nice", "superb"]
NEGATIVE = ["bad", "awful", "hate", "sad", "poor", "worst"]
FILLER = ["the", "movie", "was", "a", "day", "it", "really", "so", "this", "and", "we", "felt"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _sentence(rng: random.Random, label: str) -> str:
    words = rng.choices(FILLER, k=rng.randint(4, 9))
    if label != "neutral":
        pool = POSITIVE if label == "positive" else NEGATIVE
        for _ in range(rng.randint(1, 2)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(pool))
    return " ".join(words)


def write_csv(path: Path, rows: int = 240, seed: int = 0) -> Path:
    """A three-class sentiment CSV whose label is readable from its words."""
    rng = random.Random(seed)
    labels = ["negative", "neutral", "positive"]
    lines = ["text,label"]
    for i in range(rows):
        label = labels[i % 3]
        lines.append(f"{_sentence(rng, label)},{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def build_tiny_bert(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT with a word-level vocabulary, saved with save_pretrained."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    torch.manual_seed(0)  # the same "pretrained" weights in every test session

    folder.mkdir(parents=True, exist_ok=True)
    vocab: List[str] = SPECIAL + sorted(set(POSITIVE + NEGATIVE + FILLER))
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a tiny pretrained-style BERT folder."""
    return build_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a small three-class CSV (columns text, label)."""
    return write_csv(tmp_path_factory.mktemp("data") / "tiny.csv")


@pytest.fixture(scope="session")
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$HOME of this test process: one for the whole session.

    Ray 2.60 writes its auth token to ~/.ray/auth_token when it first starts in a process and
    expects it there on every later start, so in-process Ray sessions must share one $HOME.
    """
    return tmp_path_factory.mktemp("home")


@pytest.fixture(autouse=True)
def _no_home(tmp_path: Path, session_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every library's caches and Ray's temp files out of the real $HOME and the checkout."""
    monkeypatch.setenv("HOME", str(session_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


TRACKING_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")
"""finesweep honours these as MLflow does: neither a developer's shell nor a test that calls
``mlflow.set_tracking_uri`` (which exports the variable) may redirect another test's store."""


@pytest.fixture(scope="session", autouse=True)
def _no_tracking_env_at_start() -> None:
    for name in TRACKING_ENV:
        os.environ.pop(name, None)


@pytest.fixture(autouse=True)
def _no_tracking_env_after() -> Iterator[None]:
    yield
    for name in TRACKING_ENV:
        os.environ.pop(name, None)


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    """Every slow test carries its own time limit, sized to what it does."""
    missing = [item.nodeid for item in items if item.get_closest_marker("slow") and not
               item.get_closest_marker("timeout")]
    if missing:
        raise pytest.UsageError(f"slow tests without @pytest.mark.timeout: {', '.join(missing)}")
