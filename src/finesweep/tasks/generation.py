"""Generating text for a sample of a split and scoring it against the references: what both generative tasks'
``generate`` does.

The sample is fixed: ``rows`` examples drawn with ``data.seed``, so every report and every trial scores the same
prompts. Generation is greedy (the served model's default), in batches of ``data.batch_size``, at most
``data.max_target_length`` new tokens; a causal model's prompts are left-padded so every row continues right
where its prompt ends. The scores are ``text_scores``' (ROUGE-1/2/L, exact match, BLEU with ``data.metric: bleu``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, List, Sequence

import numpy as np

from finesweep.config import ExperimentConfig, TextMetric
from finesweep.tasks.task import Generated
from finesweep.tasks.text_scores import score_texts

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Prompted:
    """One example to generate for: the prompt's token ids and the reference's."""

    prompt: List[int]
    reference: List[int]


def sample(count: int, rows: int, seed: int) -> List[int]:
    """``rows`` of ``count`` example indices (all of them when there are fewer), drawn with ``seed``, in order."""
    chosen = np.random.default_rng(seed).permutation(count)[:max(0, rows)]
    return sorted(int(i) for i in chosen)


def generate_and_score(model: nn.Module, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Prompted],
                       config: ExperimentConfig, encoder_decoder: bool) -> Generated:
    """Greedy generations for ``examples`` scored against their references.

    Returns:
        ``Generated`` with ``rouge1``, ``rouge2``, ``rougeL``, ``exact_match`` (and ``bleu``), and one row
        ``{prompt, reference, generation}`` per example.
    """
    generations = generate_texts(model, tokenizer, [e.prompt for e in examples], config.data.max_target_length,
                                 config.data.batch_size, encoder_decoder)
    references = [str(tokenizer.decode(e.reference, skip_special_tokens=True)).strip() for e in examples]
    metrics = score_texts(generations, references, bleu=config.data.metric is TextMetric.bleu)
    rows = [{"prompt": str(tokenizer.decode(e.prompt, skip_special_tokens=False)), "reference": reference,
             "generation": generation} for e, reference, generation in zip(examples, references, generations,
                                                                              strict=True)]
    return Generated(metrics, rows)


def generate_texts(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Sequence[int]],
                   max_new_tokens: int, batch_size: int, encoder_decoder: bool) -> List[str]:
    """Greedy continuations (causal) or outputs (encoder-decoder) of token-id prompts, as text without special
    tokens. The model is put in eval mode for it and back in the mode it was in."""
    import torch

    training = model.training
    model.eval()
    try:
        texts: List[str] = []
        with torch.no_grad():
            for start in range(0, len(prompts), max(1, batch_size)):
                texts.extend(_batch(model, tokenizer, prompts[start:start + batch_size], max_new_tokens,
                                    encoder_decoder))
        return texts
    finally:
        model.train(training)


def _batch(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Sequence[int]],
           max_new_tokens: int, encoder_decoder: bool) -> List[str]:
    device = next(model.parameters()).device
    ids, mask = padded(prompts, tokenizer.pad_token_id, left=not encoder_decoder)
    output: torch.Tensor = model.generate(  # type: ignore[operator]
        input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens, do_sample=False,
        num_beams=1, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    new = output if encoder_decoder else output[:, ids.shape[1]:]
    return [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]


def padded(rows: Sequence[Sequence[int]], pad: Any, left: bool) -> Any:
    """``(input_ids, attention_mask)`` int64 tensors of token-id rows padded to the longest, on the left or
    right."""
    import torch

    width = max(1, max(len(row) for row in rows))
    ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[index, span] = torch.tensor(list(row), dtype=torch.long)
        mask[index, span] = 1
    return ids, mask
