"""Causal language modelling (``data.task: causal_lm``): domain adaptation on text, supervised fine-tuning on
prompt/response pairs, or chats, with ``AutoModelForCausalLM``.

The data (``lm_data.py``) is tokenised once, on the driver, with labels only on the target tokens (every token of
a text, the response, the assistant turns); optionally packed into ``data.max_length`` blocks. The loss is next-token
cross entropy over the target tokens, and ``val/loss`` is their average over the whole split (``loss_weight``);
``val/perplexity`` is exp of it, accumulated over the split (``TokenPerplexity``). ``generate`` scores greedy
generations on a fixed sample of prompts: the prompt column, the chat up to its last assistant turn (which the
template ends with its generation prompt), or the first half of a text's tokens, the reference being what follows.
Trials report those scores (``val/rouge1``, ``val/rouge2``, ``val/rougeL``, ``val/exact_match``, ``val/bleu``) only
with ``data.generate_every_epoch``; the winner is scored after the search either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Dict, Optional, Sequence, Tuple

from finesweep.config import DataConfig, ExperimentConfig
from finesweep.tasks.generation import Prompted, generate_and_score, sample
from finesweep.tasks.generative import GenerativeTask, load_tokenizer, model_type
from finesweep.tasks.lm_data import (
    CHAT,
    TEXT,
    Example,
    encode_rows,
    packs_separately,
    read_lm_rows,
    split_examples,
    to_split,
    warn_if_mixed,
)
from finesweep.tasks.task import Batch, Generated, Inspection, PreparedData, Split
from finesweep.tasks.token_data import IGNORED

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class LMNotes:
    """What reading and tokenising the data did, for ``describe`` and ``generate``."""

    layout: str
    examples: Tuple[int, int, int]
    """Examples of the train, validation and test splits (a packed row holds several)."""
    target_tokens: int
    """Tokens the loss is on, over all splits (after the shift)."""
    max_length: int
    packed: bool
    dropped: int = 0
    """Rows without a target in the file."""
    cut_away: int = 0
    """Rows whose target was cut away entirely by ``max_length``."""
    mixed_note: str = ""
    """Set when packed examples attend to each other (the model does not support separate sequences)."""


@dataclass(frozen=True)
class LMData(PreparedData):
    """Prepared causal LM data; ``notes`` for the terminal and for finding the prompts to generate from."""

    notes: Optional[LMNotes] = None


class CausalLM(GenerativeTask):
    """Next-token prediction on target tokens (text, responses or assistant turns) with a causal language model."""

    name: ClassVar[str] = "causal_lm"
    auto_class: ClassVar[str] = "AutoModelForCausalLM"
    shift: ClassVar[bool] = True
    lora_task_type: ClassVar[Optional[str]] = "CAUSAL_LM"
    objective_metrics: ClassVar[Tuple[str, ...]] = ("train/loss", "val/loss", "val/perplexity", "val/rougeL",
                                                    "val/exact_match")
    points_metrics: ClassVar[Tuple[str, ...]] = ("val/rougeL", "val/exact_match")

    # --- data -------------------------------------------------------------------------------------

    def inspect(self, data: DataConfig) -> Inspection:
        """Read and check the table; the rows are examples with a target (packing happens when preparing)."""
        rows = read_lm_rows(data)
        train, val, test = (len(idx) for idx in rows.splits)
        return Inspection(self, (train, val, test))

    def prepare(self, config: ExperimentConfig) -> LMData:
        from transformers import AutoConfig

        data = config.data
        rows = read_lm_rows(data)
        tokenizer = load_tokenizer(config.model.name_or_path)
        encoded = encode_rows(rows.frame, rows.layout, tokenizer, data)
        splits = [[example for example in (encoded[i] for i in idx) if example is not None] for idx in rows.splits]
        architecture = str(AutoConfig.from_pretrained(config.model.name_or_path).model_type)
        notes = LMNotes(rows.layout, (len(splits[0]), len(splits[1]), len(splits[2])),
                        sum(sum(label != IGNORED for label in labels[1:]) for split in splits for _, labels in split),
                        data.max_length, data.pack, rows.dropped, sum(e is None for e in encoded),
                        warn_if_mixed(architecture, data.pack) or "")
        train, val, test = (to_split(split, data.max_length, int(tokenizer.pad_token_id), data.pack)
                            for split in splits)
        return LMData(train=train, val=val, test=test, task=self, notes=notes)

    # --- training ---------------------------------------------------------------------------------

    def collate(self, split: Split, indices: Sequence[int]) -> Batch:
        """The base batch (features cut to the longest row), with the labels cut to the same width."""
        batch = super().collate(split, indices)
        batch["labels"] = batch["labels"][:, :batch["features"]["input_ids"].shape[1]].contiguous()
        return batch

    def forward(self, model: nn.Module, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The logits; a packed batch (with ``position_ids``) goes without its attention mask where the model
        builds its mask from restarting position ids, so each example attends only to itself."""
        if "position_ids" in features and packs_separately(model_type(model)):
            features = {name: value for name, value in features.items() if name != "attention_mask"}
        logits: torch.Tensor = model(**features, use_cache=False).logits
        return logits

    # --- generation -------------------------------------------------------------------------------

    def generates_each_report(self, config: ExperimentConfig) -> bool:
        return config.data.generate_every_epoch

    def reported_metrics(self, config: ExperimentConfig) -> Tuple[str, ...]:
        """Scores of generated text only with ``data.generate_every_epoch`` (else the winner's alone, after the
        search, as ``final/val/...``)."""
        if config.data.generate_every_epoch:
            return self.objective_metrics
        return tuple(m for m in self.objective_metrics if m not in ("val/rougeL", "val/exact_match"))

    def generate(self, model: nn.Module, split: Split, data: PreparedData, config: ExperimentConfig,
                 rows: int) -> Optional[Generated]:
        """Greedy generations for ``rows`` examples of ``split`` (seeded by ``data.seed``), scored against what
        follows their prompts."""
        examples = split_examples(split)
        layout = data.notes.layout if isinstance(data, LMData) and data.notes is not None else TEXT
        chosen = [prompted(examples[i], layout) for i in sample(len(examples), rows, config.data.seed)]
        if not chosen:
            return None
        tokenizer = load_tokenizer(config.model.name_or_path)
        return generate_and_score(model, tokenizer, chosen, config, encoder_decoder=False)

    def probe_nll(self, model: nn.Module, input_ids: torch.Tensor) -> Optional[Tuple[torch.Tensor, int]]:
        """Summed next-token NLL of every token of the blocks after their first, and how many that is."""
        import torch
        from torch import nn as torch_nn

        with torch.no_grad():
            logits = model(input_ids=input_ids, use_cache=False).logits[:, :-1]
            targets = input_ids[:, 1:]
            nll = torch_nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                                    reduction="sum")
        return nll, int(targets.numel())

    # --- serving and the terminal -----------------------------------------------------------------

    def chat(self, data: PreparedData) -> bool:
        return isinstance(data, LMData) and data.notes is not None and data.notes.layout == CHAT

    def describe(self, data: PreparedData) -> str:
        notes = data.notes if isinstance(data, LMData) else None
        if notes is None:
            return f"{data.sizes()}, causal LM"
        train, val, test = notes.examples
        parts = [f"{train}/{val}/{test} train/val/test examples, causal LM ({notes.layout}), "
                 f"{notes.target_tokens:,} target tokens"]
        parts.append(f"packed into {len(data.train)}/{len(data.val)}/{len(data.test or ())} blocks of "
                     f"{notes.max_length} tokens" if notes.packed else f"not packed, at most {notes.max_length} tokens")
        if notes.dropped or notes.cut_away:
            parts.append(f"{notes.dropped} rows without a target and {notes.cut_away} whose target "
                         f"max_length cut away were dropped")
        if notes.mixed_note:
            parts.append(notes.mixed_note)
        return "; ".join(parts)


def prompted(example: Example, layout: str) -> Prompted:
    """What the model is asked and what it should answer: a text's first half and the rest; otherwise everything
    before the last run of target tokens, and that run."""
    ids, labels = example
    if layout == TEXT:
        half = max(1, len(ids) // 2)
        return Prompted(ids[:half], ids[half:])
    targets = [i for i, label in enumerate(labels) if label != IGNORED]
    end = targets[-1] + 1
    start = end - 1
    while start > 0 and labels[start - 1] != IGNORED:
        start -= 1
    return Prompted(ids[:start], ids[start:end])
