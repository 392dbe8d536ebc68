"""How the forgetting probe scores an encoder: the pretrained masked-LM head on top of the fine-tuned encoder.

A text classifier or token classifier has no language-model head of its own, but the checkpoint it was
fine-tuned from usually has one (BERT, RoBERTa, DeBERTa ... are pretrained as masked LMs). The probe loads that
masked LM from the pretrained folder (``AutoModelForMaskedLM``) and copies the fine-tuned model's encoder (its
``base_model``) into it, so the head it was pretrained with reads what fine-tuning made of the encoder. A LoRA
model's encoder is read through its adapters: each adapted weight is ``base + scale * B @ A`` (peft's
``get_delta_weight``), computed without touching the live model.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Dict, Iterator, List

from finesweep.errors import ConfigError, one_line
from finesweep.finetune.strategies import unwrap

if TYPE_CHECKING:
    import torch
    from torch import nn

NO_HEAD_FIX = ("Remove probe.forgetting, or fine-tune from a checkpoint saved with its masked-LM head "
               "(bert-base-uncased has one; sentence-transformers models do not).")


def load_masked_lm(model_path: str, check: bool) -> nn.Module:
    """The pretrained model as a masked LM, on the CPU, in eval mode.

    Args:
        model_path: ``model.name_or_path``.
        check: raise when the checkpoint lacks the head's weights (preflight); trials load what passed it.

    Raises:
        ConfigError: the architecture has no masked-LM class, or (``check``) the checkpoint has no weights for
            its head: a head initialised at random would make the probe measure noise.
    """
    from transformers import AutoModelForMaskedLM

    try:
        with _quiet_loading():  # a missing head is reported below, in one line
            model, info = AutoModelForMaskedLM.from_pretrained(model_path, output_loading_info=True)
    except ValueError as exc:  # "Unrecognized configuration class ... for this kind of AutoModel"
        raise ConfigError(f"probe.forgetting needs a model with a language-model head, got {model_path}, whose "
                          f"architecture has no masked-LM head ({one_line(exc)}). Remove probe.forgetting.") from None
    prefix = f"{model.base_model_prefix}."
    missing = sorted(key for key in info["missing_keys"] if not key.startswith(prefix))
    if check and missing:
        raise ConfigError(f"probe.forgetting needs a model with a language-model head, got {model_path} whose "
                          f"checkpoint has none ({len(missing)} masked-LM head weights missing, e.g. {missing[0]}). "
                          + NO_HEAD_FIX)
    result: nn.Module = model.eval()
    return result


def with_encoder_of(masked_lm: nn.Module, model: nn.Module) -> nn.Module:
    """``masked_lm`` with its encoder's weights replaced by those of ``model``'s (a fine-tuned model of the same
    pretrained checkpoint, plain or peft-wrapped); returned for chaining.

    Raises:
        RuntimeError: ``model``'s encoder lacks weights the masked LM's has (not the same architecture).
    """
    encoder: Any = masked_lm.base_model
    result = encoder.load_state_dict(encoder_state(model), strict=False)  # extra keys: a classifier's pooler
    if result.missing_keys:
        raise RuntimeError(f"the fine-tuned {type(model).__name__}'s encoder lacks {result.missing_keys[:3]} of the "
                           f"masked LM's {type(masked_lm).__name__}: the probe needs the same pretrained encoder")
    return masked_lm


def encoder_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The state dict of the model's encoder (``base_model``) with LoRA updates merged in and peft's names undone
    (``query.base_layer.weight`` + ``scale * B @ A`` -> ``query.weight``); shares storage where nothing merges."""
    import torch

    encoder: Any = unwrap(model).base_model
    state: Dict[str, torch.Tensor] = encoder.state_dict()
    with torch.no_grad():
        for name, layer in _lora_layers(encoder):
            prefix = f"{name}." if name else ""
            for key in [key for key in state if key.startswith(prefix)]:
                value = state.pop(key)
                if key.startswith(f"{prefix}base_layer."):
                    state[prefix + key[len(f"{prefix}base_layer."):]] = value
            weight = f"{prefix}weight"
            if not layer.merged:  # a merged layer's base weight already holds its update
                state[weight] = state[weight] + sum(_deltas(layer), torch.zeros_like(state[weight]))
    return state


def _lora_layers(encoder: nn.Module) -> List[Any]:
    if "peft" not in sys.modules:  # only a LoRA trial imports peft
        return []
    from peft.tuners.lora import LoraLayer

    return [(name, module) for name, module in encoder.named_modules() if isinstance(module, LoraLayer)]


def _deltas(layer: Any) -> Iterator[torch.Tensor]:
    for adapter in layer.active_adapters:
        if adapter in layer.lora_A or adapter in layer.lora_embedding_A:
            yield layer.get_delta_weight(adapter)


@contextmanager
def _quiet_loading() -> Iterator[None]:
    from transformers.utils import logging

    before = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(before)
