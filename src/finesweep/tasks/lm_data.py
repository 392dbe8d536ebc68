"""Causal LM data: reading a table in one of three layouts, tokenising it with target-token labels, and packing.

Layouts, chosen by the columns the table has (the first that fits):

- **chat**: ``data.messages_column`` holds each row's turns, a list of ``{role, content}`` (a JSON string in a
  CSV). The whole chat is rendered with the tokenizer's own chat template; the loss is on the assistant turns
  only, exactly the characters the template adds for each assistant message (found by rendering the chat up to
  each turn, with and without it). The template decides what ends a turn (usually the eos token).
- **prompt-response** (supervised fine-tuning): ``data.prompt_column`` and ``data.response_column``; prompt and
  response are tokenised apart (the prompt as the tokenizer encodes a text, with its bos, the response without
  special tokens, then eos), as the served model sees a prompt alone. The loss is on the response tokens only.
- **text** (domain adaptation): ``data.text_column``, eos appended; the loss is on every token.

Every example is cut to ``data.max_length`` tokens: a long text keeps its start; a long prompt-response pair keeps
the end of its prompt (its bos too) and at least half the length for the response; a long chat keeps its start.
Rows whose target is empty, or is cut away entirely, are dropped and counted.

**Packing** (``data.pack``) fills ``max_length`` blocks with whole examples in order (a new block starts where the
next example does not fit), pads the last, and gives each example position ids that restart at 0. Models that
build their attention mask with transformers' ``create_causal_mask`` (GPT-2, Llama, Qwen, Mistral, Phi ... in
transformers 5) read restarting position ids without an attention mask as separate sequences: each example
attends only to itself, and its logits equal those it has alone (``packs_separately``). Other models attend
across the examples of a block, which ``describe`` says and a warning logs. The first token of each packed example
is never a target: it would be predicted from the previous example.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from finesweep.config import DataConfig
from finesweep.errors import DataError
from finesweep.tasks.data import read_table, split_indices, subsample
from finesweep.tasks.task import Split
from finesweep.tasks.token_data import IGNORED

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger("finesweep.tasks")

TEXT, PROMPT, CHAT = "text", "prompt-response", "chat"
"""The three layouts."""

Example = Tuple[List[int], List[int]]
"""One tokenised example: its token ids and its labels (-100 where there is no loss)."""


@dataclass(frozen=True)
class LMRows:
    """The usable rows of the table in one layout, and their split, before tokenising."""

    layout: str
    frame: pd.DataFrame
    splits: Tuple[np.ndarray, np.ndarray, np.ndarray]
    dropped: int
    """Rows without a target (empty or missing response, text, or assistant turn)."""


def read_lm_rows(data: DataConfig) -> LMRows:
    """Read the table, pick its layout, drop rows without a target and split the rest (seeded, unstratified).

    Raises:
        DataError: no known column, malformed chat turns, no usable row, too few rows to split.
    """
    frame = read_table(data, {})
    layout = layout_of(frame.columns, data)
    if layout == CHAT:
        column = data.messages_column
        frame = pd.DataFrame({column: [parse_turns(value, row, column) for row, value in
                                       enumerate(frame[column], 1)]})
        keep = frame[column].map(lambda turns: any(t["role"] == "assistant" and t["content"].strip()
                                                   for t in turns))
    elif layout == PROMPT:
        frame = frame[[data.prompt_column, data.response_column]].astype(object)
        frame[data.prompt_column] = frame[data.prompt_column].map(lambda v: "" if _missing(v) else str(v))
        keep = frame[data.response_column].map(lambda v: not _missing(v) and bool(str(v).strip()))
    else:
        frame = frame[[data.text_column]]
        keep = frame[data.text_column].map(lambda v: not _missing(v) and bool(str(v).strip()))
    kept = frame[keep.to_numpy(dtype=bool)].reset_index(drop=True)
    if kept.empty:
        key, column = _target_key(layout, data)
        raise DataError(f"{key}: no row of {data.path} has a non-empty target in column {column!r} "
                        f"({len(frame)} rows read). Give the rows a target, or point {key} at the right column.")
    kept = subsample(kept, np.zeros(len(kept), dtype=np.int64), data)
    return LMRows(layout, kept, split_indices(np.zeros(len(kept), dtype=np.int64), data), int((~keep).sum()))


def layout_of(columns: Any, data: DataConfig) -> str:
    """The layout the table's columns fit: chat, then prompt-response, then text.

    Raises:
        DataError: none of them fits.
    """
    names = set(map(str, columns))
    if data.messages_column in names:
        return CHAT
    if data.prompt_column in names and data.response_column in names:
        return PROMPT
    if data.text_column in names:
        return TEXT
    raise DataError(f"data: causal_lm needs a chat column {data.messages_column!r} (data.messages_column), prompt "
                    f"and response columns {data.prompt_column!r} and {data.response_column!r} "
                    f"(data.prompt_column, data.response_column) or a text column {data.text_column!r} "
                    f"(data.text_column), got columns {', '.join(map(str, columns))} in {data.path}. Set those keys "
                    "to your columns.")


def parse_turns(value: Any, row: int, column: str) -> List[Dict[str, str]]:
    """A row's chat: a list of ``{role, content}`` (or its JSON text); an empty list for a missing cell.

    Raises:
        DataError: not JSON, not a list of objects with a string role and content.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(f"data.messages_column: row {row} of column {column!r} is not JSON, got {value[:60]!r}. "
                            'Give each row a list of turns: [{"role": "user", "content": "..."}, ...].') from None
    if value is None or (not isinstance(value, (list, tuple, np.ndarray)) and pd.isna(value)):
        return []
    turns = list(value) if isinstance(value, (list, tuple, np.ndarray)) else None
    if turns is None or not all(isinstance(t, dict) and isinstance(t.get("role"), str)
                                and isinstance(t.get("content"), str) for t in turns):
        raise DataError(f"data.messages_column: row {row} of column {column!r} must be a list of turns with a string "
                        f"role and content, got {str(value)[:80]!r}. Write each turn as "
                        '{"role": "user", "content": "..."}.')
    return [{"role": t["role"], "content": t["content"]} for t in turns]


def encode_rows(frame: pd.DataFrame, layout: str, tokenizer: PreTrainedTokenizerBase, data: DataConfig
                ) -> List[Optional[Example]]:
    """Each row as token ids and labels, cut to ``data.max_length``; None where no target token is left.

    Raises:
        DataError: chat rows with a tokenizer that has no chat template, or a template that cannot render them.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError(f"data: causal_lm appends the tokenizer's eos token to each target, got a tokenizer without "
                        f"one ({type(tokenizer).__name__}). Use a model whose tokenizer defines eos_token.")
    if layout == TEXT:
        ids = tokenizer(frame[data.text_column].astype(str).tolist(), verbose=False)["input_ids"]
        return [_kept((list(row) + [eos])[:data.max_length], None) for row in ids]
    if layout == PROMPT:
        prompts = tokenizer(frame[data.prompt_column].tolist(), verbose=False)["input_ids"]
        responses = tokenizer(frame[data.response_column].astype(str).tolist(), add_special_tokens=False,
                              verbose=False)["input_ids"]
        special = set(tokenizer.all_special_ids)
        return [_prompt_response(list(p), list(r) + [eos], data.max_length, special)
                for p, r in zip(prompts, responses, strict=True)]
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"data.messages_column: the tokenizer ({type(tokenizer).__name__} of the model) has no chat "
                        f"template to render the turns of column {data.messages_column!r}. Use a chat model's "
                        "tokenizer (one with chat_template), or give prompt and response columns instead.")
    return [_chat(turns, row, tokenizer, data.max_length) for row, turns in enumerate(frame[data.messages_column], 1)]


def _prompt_response(prompt: List[int], response: List[int], length: int, special: Any) -> Optional[Example]:
    if len(prompt) + len(response) > length:
        response = response[:min(len(response), max(length - len(prompt), length // 2))]
        lead = prompt[:1] if prompt and prompt[0] in special else []  # the bos stays first
        room = length - len(response) - len(lead)
        prompt = lead + (prompt[len(lead):][-room:] if room > 0 else [])
    return _kept(prompt + response, [IGNORED] * len(prompt) + response)


def _chat(turns: Sequence[Dict[str, str]], row: int, tokenizer: PreTrainedTokenizerBase, length: int
          ) -> Optional[Example]:
    try:
        text = _render(tokenizer, turns, False)
        spans = []
        for index, turn in enumerate(turns):
            if turn["role"] == "assistant":
                start = len(_render(tokenizer, turns[:index], True))
                end = len(_render(tokenizer, turns[:index + 1], False))
                spans.append((start, end))
                consistent = text.startswith(_render(tokenizer, turns[:index + 1], False))
                if not consistent or start > end:
                    raise ValueError("the chat up to a turn is not the start of the whole chat")
    except Exception as exc:  # noqa: BLE001 - a template error (jinja2, a role it refuses) is a data error
        raise DataError(f"data.messages_column: the tokenizer's chat template cannot render row {row}'s turns so "
                        f"that each assistant turn can be found ({type(exc).__name__}: {str(exc)[:100]}). Check the "
                        "roles the template accepts, or use prompt and response columns.") from None
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids = list(encoded["input_ids"])[:length]
    labels = [token if any(s <= begin < e for s, e in spans) else IGNORED
              for token, (begin, _) in zip(ids, encoded["offset_mapping"], strict=False)]
    return _kept(ids, labels)


def _render(tokenizer: PreTrainedTokenizerBase, turns: Sequence[Dict[str, str]], generation_prompt: bool) -> str:
    if not turns:
        return ""
    return str(tokenizer.apply_chat_template(list(turns), tokenize=False, add_generation_prompt=generation_prompt))


def _kept(ids: List[int], labels: Optional[List[int]]) -> Optional[Example]:
    labels = list(ids) if labels is None else labels[:len(ids)]
    # position 0 is never a target (nothing precedes it): an example needs a labelled token after it
    return (ids, labels) if any(label != IGNORED for label in labels[1:]) else None


# --- arrays ---------------------------------------------------------------------------------------------------------


def to_split(examples: Sequence[Example], length: int, pad: int, pack: bool) -> Split:
    """Examples as arrays of ``length`` columns: ``input_ids``, ``attention_mask`` (and ``position_ids`` when
    packed) as int32 features, labels int64 with -100 on padding.

    Unpacked, a row is an example, right-padded. Packed, a row is a block of whole examples in order; each
    example's position ids restart at 0 and its first label is -100; the padding after the last is a segment of its
    own (its positions restart too) that nothing attends to.
    """
    rows = pack_rows(examples, length) if pack else [[example] for example in examples]
    ids = np.full((len(rows), length), pad, dtype=np.int32)
    mask = np.zeros((len(rows), length), dtype=np.int32)
    positions = np.zeros((len(rows), length), dtype=np.int32)
    labels = np.full((len(rows), length), IGNORED, dtype=np.int64)
    for row, members in enumerate(rows):
        at = 0
        for example_ids, example_labels in members:
            size = len(example_ids)
            ids[row, at:at + size] = example_ids
            labels[row, at:at + size] = example_labels
            labels[row, at] = IGNORED
            positions[row, at:at + size] = np.arange(size)
            at += size
        mask[row, :at] = 1
        positions[row, at:] = np.arange(length - at)
    features = {"input_ids": ids, "attention_mask": mask}
    if pack:
        features["position_ids"] = positions
    return Split(features, labels)


def pack_rows(examples: Sequence[Example], length: int) -> List[List[Example]]:
    """Whole examples, in order, into blocks of at most ``length`` tokens."""
    blocks: List[List[Example]] = []
    used = length
    for example in examples:
        if used + len(example[0]) > length:
            blocks.append([])
            used = 0
        blocks[-1].append(example)
        used += len(example[0])
    return blocks


def split_examples(split: Split) -> List[Example]:
    """The examples of a split again, one per unpacked row or per segment of a packed block (padding left out)."""
    found: List[Example] = []
    ids, mask, labels = split.features["input_ids"], split.features["attention_mask"], split.labels
    positions = split.features.get("position_ids")
    for row in range(len(split)):
        width = int(mask[row].sum())
        starts = [0] if positions is None else [int(i) for i in np.flatnonzero(positions[row, :width] == 0)]
        for start, end in zip(starts, [*starts[1:], width], strict=True):
            found.append((ids[row, start:end].tolist(), labels[row, start:end].tolist()))
    return found


MASK_BUILDERS = ("create_causal_mask", "create_sliding_window_causal_mask")
"""transformers' mask builders that read restarting position ids (without an attention mask) as packed sequences."""


@functools.lru_cache(maxsize=None)
def packs_separately(model_type: str) -> bool:
    """Whether transformers' causal LM of this type builds its mask with ``MASK_BUILDERS``, read from the source of
    the modeling file that defines its class (its own folder's, else any: GPT-SW3 is GPT-2's)."""
    import transformers
    from transformers.models.auto.configuration_auto import model_type_to_module_name
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    class_name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if not class_name:
        return False
    models = Path(transformers.__file__).parent / "models"
    own = sorted((models / model_type_to_module_name(model_type)).glob("modeling_*.py"))
    for path in [*own, *sorted(models.glob("*/modeling_*.py"))]:
        source = path.read_text(encoding="utf-8")
        if f"class {class_name}(" in source:
            return any(builder in source for builder in MASK_BUILDERS)
    return False


def warn_if_mixed(model_type: str, pack: bool) -> Optional[str]:
    """A note (logged as a warning too) when packed examples will attend to each other; None otherwise."""
    if not pack or packs_separately(model_type):
        return None
    note = (f"packed examples attend to each other within a block: transformers' {model_type} model does not build "
            "its mask from restarting position ids (create_causal_mask); set data.pack=false to keep them apart")
    logger.warning("%s", note)
    return note


def _target_key(layout: str, data: DataConfig) -> Tuple[str, str]:
    if layout == CHAT:
        return "data.messages_column", data.messages_column
    if layout == PROMPT:
        return "data.response_column", data.response_column
    return "data.text_column", data.text_column


def _missing(value: Any) -> bool:
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))
