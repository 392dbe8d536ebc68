"""The forgetting probe's text: a plain-text file read, checked and cut into token blocks the model reads.

Blocks are framed as the model's tokenizer frames one text (BERT: ``[CLS] ... [SEP]``, Llama: ``<s> ...``,
GPT-2: nothing) and hold ``min(data.max_length, 512, the model's positions, probe.max_tokens)`` tokens each:
the length the model is fine-tuned at, within what it can read. The tail that does not fill a block is dropped
(as in standard LM evaluation), unless the text is shorter than one block.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Sequence, Tuple

import numpy as np

from finesweep.config import ExperimentConfig
from finesweep.errors import ConfigError, DataError, one_line

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

BLOCK_CAP = 512
"""Tokens per block at most: context enough for a perplexity, and a few blocks per batch."""
MIN_TOKENS = 16
"""Tokens of text the probe needs at least (as ``probe.max_tokens`` does): fewer say nothing."""
CHARS_PER_TOKEN = 32
"""Characters read per token wanted: far more than any tokenizer's average (~4 for English BPE), so the text
read always fills ``probe.max_tokens`` when the file has that much, without reading a huge file whole."""
MASK_SHARE = 0.15
"""Share of a block's non-special positions a masked LM predicts (BERT's pretraining share)."""
MASK_SEED = 0
"""Seed of the masked positions: fixed, so the pretrained model and every trial predict the same tokens."""


def read_text(path: str, max_tokens: int) -> str:
    """The file's first ``max_tokens * CHARS_PER_TOKEN`` characters (cut at a whitespace when there are more).

    Raises:
        DataError: the file is missing, unreadable, not UTF-8, binary (NUL bytes) or blank.
    """
    file, chars = Path(path), max_tokens * CHARS_PER_TOKEN
    if not file.is_file():
        raise DataError(f"probe.forgetting must be an existing plain-text file, got {path} (no such file). "
                        "Fix the path, or remove probe.forgetting.")
    try:
        with file.open(encoding="utf-8") as handle:
            text = handle.read(chars + 1)
    except UnicodeDecodeError as exc:
        raise DataError(f"probe.forgetting must be UTF-8 plain text, got {path} (byte {exc.object[exc.start]:#04x} "
                        "is not UTF-8). Save it as UTF-8 text, or remove probe.forgetting.") from None
    except OSError as exc:
        raise DataError(f"probe.forgetting must be a readable plain-text file, got {path} ({one_line(exc)}). "
                        "Fix its permissions, or remove probe.forgetting.") from None
    if "\x00" in text:
        raise DataError(f"probe.forgetting must be plain text, got {path}, which holds NUL bytes (a binary file). "
                        "Use a .txt file of general text, or remove probe.forgetting.")
    if not text.strip():
        raise DataError(f"probe.forgetting must hold text, got {path}, which is empty. Use a file of general text "
                        "(a few thousand words), or remove probe.forgetting.")
    if len(text) > chars:
        text = text[:chars]
        cut = max(text.rfind(" "), text.rfind("\n"))
        text = text[:cut] if cut > 0 else text  # no half word at the end
    return text


def tokenizer_for(model_path: str) -> PreTrainedTokenizerBase:
    """The model's tokenizer.

    Raises:
        ConfigError: the model has none (image models).
    """
    from transformers import AutoTokenizer

    try:
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # what transformers raises for a folder without one
        raise ConfigError(f"probe.forgetting needs a text model with a tokenizer, got model.name_or_path="
                          f"{model_path}, which has none ({one_line(exc)}). Remove probe.forgetting: an image "
                          "model has no language to forget.") from None
    return tokenizer


def probe_blocks(tokenizer: PreTrainedTokenizerBase, text: str, config: ExperimentConfig, path: str) -> np.ndarray:
    """``text`` as ``(blocks, tokens)`` int32 token ids, each block framed by the model's special tokens; at most
    ``probe.max_tokens`` tokens in all.

    Raises:
        DataError: the text has fewer than ``MIN_TOKENS`` tokens.
    """
    ids: List[int] = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    if len(ids) < MIN_TOKENS:
        raise DataError(f"probe.forgetting needs at least {MIN_TOKENS} tokens of text, got {len(ids)} in {path}. "
                        "Use a longer file (a few thousand words), or remove probe.forgetting.")
    prefix, suffix = special_frame(tokenizer)
    length = block_length(config, tokenizer)
    content = max(1, length - len(prefix) - len(suffix))
    count = min(len(ids) // content, max(1, config.probe.max_tokens // length))
    if count == 0:  # shorter than one block: one short block
        return np.asarray([prefix + ids + suffix], dtype=np.int32)
    return np.asarray([prefix + ids[i * content:(i + 1) * content] + suffix for i in range(count)], dtype=np.int32)


def block_length(config: ExperimentConfig, tokenizer: PreTrainedTokenizerBase) -> int:
    """Tokens per block: ``min(data.max_length, BLOCK_CAP, the model's positions, probe.max_tokens)``."""
    from transformers import AutoConfig

    architecture = AutoConfig.from_pretrained(config.model.name_or_path)
    limits = [config.data.max_length, BLOCK_CAP, config.probe.max_tokens]
    limits += [value for value in (getattr(architecture, "max_position_embeddings", None),
                                   getattr(architecture, "n_positions", None), tokenizer.model_max_length)
               if isinstance(value, int) and 0 < value < 1_000_000]  # tokenizers say 1e30 for "no limit"
    return min(limits)


def special_frame(tokenizer: PreTrainedTokenizerBase) -> Tuple[List[int], List[int]]:
    """The special tokens the tokenizer puts before and after one text (``[CLS]``/``[SEP]``, ``<s>``, none)."""
    plain: List[int] = tokenizer("a", add_special_tokens=False)["input_ids"]
    framed: List[int] = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(framed) - len(plain) + 1):
        if plain and framed[start:start + len(plain)] == plain:
            return framed[:start], framed[start + len(plain):]
    return [], []


def masked_positions(blocks: np.ndarray, special_ids: Sequence[int]) -> np.ndarray:
    """Which positions a masked LM predicts: ``MASK_SHARE`` of each block's non-special positions (at least one),
    drawn once with ``MASK_SEED``."""
    rng = np.random.default_rng(MASK_SEED)
    masked = np.zeros(blocks.shape, dtype=bool)
    for row, block in enumerate(blocks):
        candidates = np.flatnonzero(~np.isin(block, np.asarray(list(special_ids), dtype=block.dtype)))
        if len(candidates):
            picked = rng.choice(candidates, size=max(1, round(MASK_SHARE * len(candidates))), replace=False)
            masked[row, picked] = True
    return masked


def mask_token_id(tokenizer: Any, model_path: str) -> int:
    """The tokenizer's mask token.

    Raises:
        ConfigError: it has none (the masked-LM probe replaces tokens with it).
    """
    if tokenizer.mask_token_id is None:
        raise ConfigError(f"probe.forgetting needs a mask token to score an encoder, got model.name_or_path="
                          f"{model_path}, whose tokenizer has none. Remove probe.forgetting.")
    return int(tokenizer.mask_token_id)
