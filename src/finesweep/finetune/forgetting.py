"""The catastrophic-forgetting probe: how much worse a fine-tuned model models general text than it did before.

A plain-text file of general text (``probe.forgetting``) is tokenised once, on the driver, into fixed blocks of
at most ``probe.max_tokens`` tokens, and the pretrained model's perplexity on them is computed once. Each trial
measures its model on the same blocks: ``probe/perplexity`` and ``probe/perplexity_increase`` (how much the
fine-tuning made it forget). Perplexity is ``exp(total NLL / total tokens scored)``, token-weighted over every
block, in nats.

How a model is scored depends on what it has:

- **its own language-model head** (causal LMs, seq2seq): the task scores the blocks itself (``Task.probe_nll``);
- **an encoder** (BERT-like classifiers, token classifiers) whose pretrained checkpoint has a masked-LM head:
  masked-LM perplexity. A fixed 15% of each block's non-special positions (seeded, chosen once: the same for the
  pretrained model and every trial, so the values compare) are replaced by the mask token, and the pretrained
  masked-LM head, on top of the fine-tuned encoder, predicts them. It is the pseudo-perplexity of a single mask
  pattern rather than Salazar et al.'s one-token-at-a-time sum: one forward pass per block instead of one per
  token. Only the encoder changes between the pretrained value and a trial's, so the increase is the encoder's
  forgetting alone.

The probe holds token ids and numbers only (it is pickled to every Ray trial); the masked-LM model an encoder is
scored with is loaded in the trial on first use and never pickled.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Iterator, Optional, Tuple

import numpy as np

from finesweep.config import ExperimentConfig
from finesweep.errors import ConfigError
from finesweep.finetune.masked_lm import load_masked_lm, with_encoder_of
from finesweep.finetune.probe_text import mask_token_id, masked_positions, probe_blocks, read_text, tokenizer_for
from finesweep.tasks import Task

if TYPE_CHECKING:
    import torch
    from torch import nn

BATCH_TOKENS = 2048
"""Tokens per scoring batch (16 blocks of 128): a masked LM's logits are batch x vocabulary floats, e.g.
2048 x 30,522 x 4 bytes = 250 MB for BERT."""


@dataclass(eq=False)
class ForgettingProbe:
    """Token blocks of a general-text file and the pretrained model's perplexity on them.

    Attributes:
        model_path: ``model.name_or_path``: the pretrained model (a masked LM is rebuilt from it in trials).
        blocks: ``(blocks, tokens)`` token ids, special tokens included (as the model reads them).
        masked: ``(blocks, tokens)`` which positions a masked LM predicts; None = the task's own LM head scores
            the blocks (``Task.probe_nll``).
        mask_id: the token that replaces the masked positions (masked LMs only).
        base_perplexity: the pretrained model's perplexity on the blocks.
        tokens: how many tokens the perplexity is over (a causal LM: all but each block's first; a masked LM: the
            masked ones).
    """

    model_path: str
    blocks: np.ndarray
    masked: Optional[np.ndarray] = None
    mask_id: int = -1
    base_perplexity: float = math.nan
    tokens: int = 0
    _masked_lm: Any = field(default=None, init=False, repr=False)

    @classmethod
    def prepare(cls, config: ExperimentConfig, task: Task) -> Optional[ForgettingProbe]:
        """Read and tokenise ``probe.forgetting`` and score the pretrained model on it, once, on the driver.

        Returns:
            The probe, or None when ``probe.forgetting`` is null.

        Raises:
            DataError: the file is missing, empty, not UTF-8 text or shorter than 16 tokens.
            ConfigError: the model has no tokenizer (an image model) or no language-model head: neither its task
                scores text (``Task.probe_nll``) nor its checkpoint has masked-LM head weights.
        """
        if config.probe.forgetting is None:
            return None
        path, model_path = config.probe.forgetting, config.model.name_or_path
        tokenizer = tokenizer_for(model_path)
        blocks = probe_blocks(tokenizer, read_text(path, config.probe.max_tokens), config, path)
        if type(task).probe_nll is not Task.probe_nll:  # the task may score text with its model's own LM head
            probe = cls(model_path, blocks)
            scored = probe._language_model_nll(task, _load_language_model(model_path))
            if scored is not None:
                probe.base_perplexity, probe.tokens = _perplexity(*scored), scored[1]
                return probe
        if config.model.load_in_4bit:
            raise ConfigError("probe.forgetting scores an encoder with its pretrained masked-LM head, which cannot "
                              "read 4-bit weights, got model.load_in_4bit=true. Set model.load_in_4bit=false, or "
                              "remove probe.forgetting.")
        masked_lm = load_masked_lm(model_path, check=True).to(_driver_device())
        probe = cls(model_path, blocks, masked_positions(blocks, tokenizer.all_special_ids),
                    mask_token_id(tokenizer, model_path))
        scored = probe._masked_nll(masked_lm)
        probe.base_perplexity, probe.tokens = _perplexity(*scored), scored[1]
        return probe

    def measure(self, task: Task, model: nn.Module) -> Dict[str, float]:
        """The probe's metrics for a (fine-tuned, possibly peft-wrapped) model of ``task``, on its device.

        The model is scored in eval mode without gradients; every sub-module's train/eval mode is restored after.
        It may be called inside ``torch.inference_mode`` (Lightning's validation hooks) or outside it alike: the
        masked LM it caches is built and loaded outside inference mode, so a later call can still copy into it.

        Returns:
            ``probe/perplexity`` and ``probe/perplexity_increase`` (over the pretrained model's).
        """
        perplexity = self.perplexity(task, model)
        return {"probe/perplexity": perplexity, "probe/perplexity_increase": perplexity - self.base_perplexity}

    def perplexity(self, task: Task, model: nn.Module) -> float:
        """``exp(total NLL / tokens scored)`` of ``model`` on the blocks (see ``measure``)."""
        import torch

        with torch.inference_mode(False), torch.no_grad():
            return self._perplexity(task, model)

    def _perplexity(self, task: Task, model: nn.Module) -> float:
        if self.masked is None:
            scored = self._language_model_nll(task, model)
            if scored is None:
                raise RuntimeError(f"{type(task).__name__}.probe_nll scored the pretrained model but returned None "
                                   f"for {type(model).__name__}: it must score every model of its task")
            return _perplexity(*scored)
        device = _device(model)
        if self._masked_lm is None or _device(self._masked_lm) != device:
            self._masked_lm = load_masked_lm(self.model_path, check=False).to(device)
        with _evaluating(model):
            return _perplexity(*self._masked_nll(with_encoder_of(self._masked_lm, model)))

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_masked_lm"] = None  # a model: rebuilt where it is used, never shipped to a trial
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _batches(self) -> Iterator[Tuple[int, int]]:
        step = max(1, BATCH_TOKENS // self.blocks.shape[1])
        for start in range(0, len(self.blocks), step):
            yield start, min(start + step, len(self.blocks))

    def _language_model_nll(self, task: Task, model: nn.Module) -> Optional[Tuple[float, int]]:
        import torch

        total, count = 0.0, 0
        with _evaluating(model), torch.no_grad():
            for start, stop in self._batches():
                ids = torch.from_numpy(self.blocks[start:stop].astype(np.int64)).to(_device(model))
                scored = task.probe_nll(model, ids)
                if scored is None:
                    return None
                total += float(scored[0].detach().double())
                count += int(scored[1])
        return total, count

    def _masked_nll(self, masked_lm: nn.Module) -> Tuple[float, int]:
        import torch
        from torch.nn import functional

        masked = self.masked if self.masked is not None else np.zeros(self.blocks.shape, dtype=bool)
        device = _device(masked_lm)
        total, count = 0.0, 0
        with _evaluating(masked_lm), torch.no_grad():
            for start, stop in self._batches():
                targets = torch.from_numpy(self.blocks[start:stop].astype(np.int64)).to(device)
                where = torch.from_numpy(masked[start:stop]).to(device)
                logits = masked_lm(input_ids=targets.masked_fill(where, self.mask_id),
                                   attention_mask=torch.ones_like(targets)).logits
                total += float(functional.cross_entropy(logits[where].float(), targets[where], reduction="sum"))
                count += int(where.sum())
        return total, count


def _perplexity(total_nll: float, tokens: int) -> float:
    try:
        return math.exp(total_nll / max(1, tokens))
    except OverflowError:
        return math.inf


def _load_language_model(path: str) -> nn.Module:
    """The pretrained model with its own LM head: a seq2seq LM for encoder-decoder configs, else a causal LM."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if AutoConfig.from_pretrained(path).is_encoder_decoder else AutoModelForCausalLM
    model: nn.Module = auto.from_pretrained(path)
    return model.to(_driver_device())


def _driver_device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _device(model: nn.Module) -> torch.device:
    import torch

    return next((p.device for p in model.parameters()), torch.device("cpu"))


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode inside, then every sub-module back in the mode it had (a frozen part may be kept in eval)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
