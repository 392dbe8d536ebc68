"""A model's layer map: its embeddings, its ordered blocks and its head, which the fine-tuning strategies
(freeze, gradual unfreezing, layer-wise learning rates, LoRA) work on.

Each task says where these are in its models (``Task.layer_map``); ``transformer_layer_map`` reads Hugging
Face transformer models with a new head, the default; ``generative_layer_map`` reads language models (GPT-2,
Llama-family, T5, BART ...), whose head is their own pretrained output layer. The idea is timm's
``group_matcher``: one description of a model's layers, used by every strategy alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Tuple

if TYPE_CHECKING:
    from torch import nn

LAYER_LISTS = ("encoder.layer", "transformer.layer", "encoder.layers", "layers", "encoder.stages", "encoder.blocks")
"""Where base models keep their ordered blocks: BERT/RoBERTa/MiniLM, ViT/DeiT/DINOv2 (encoder.layer), DistilBERT,
Swin (encoder.layers), ResNet/ConvNeXt (encoder.stages), EfficientNet (encoder.blocks)."""

EMBEDDINGS = ("embeddings", "embedder")
"""The base model's input module: a transformer's embeddings, a CNN's stem (ResNet's ``embedder``)."""

LAYER_NAME = re.compile(r"(?:^|\.)layers?\.(\d+)\.")
"""Fallback when no layer list is found: ``...layer.3.output.dense.weight`` belongs to layer 3."""


@dataclass(frozen=True)
class LayerMap:
    """A model's parameter names (as ``named_parameters`` gives them), from the input up.

    Attributes:
        embeddings: the input embeddings (or a CNN's stem).
        layers: each block's parameters, bottom (index 0) to top.
        other: base-model parameters in neither, e.g. BERT's pooler; they sit above the top block.
        head: every parameter outside the base model: the task's head.
    """

    embeddings: Tuple[str, ...]
    layers: Tuple[Tuple[str, ...], ...]
    other: Tuple[str, ...]
    head: Tuple[str, ...]

    @property
    def num_layers(self) -> int:
        """Number of blocks found."""
        return len(self.layers)

    def head_modules(self) -> List[str]:
        """The head's top-level module names (``classifier``; DistilBERT's ``pre_classifier`` too)."""
        return sorted({name.split(".")[0] for name in self.head})


def transformer_layer_map(model: nn.Module) -> LayerMap:
    """Group a Hugging Face model's parameters into embeddings, layers, other and head.

    The base model is ``model.base_model`` (``bert``, ``distilbert``, ...); everything outside it is the head.
    Encoder layers are looked up at the paths in ``LAYER_LISTS``, then by parameter name. Pass the plain model,
    not a peft wrapper.
    """
    from torch import nn

    names = {id(param): name for name, param in model.named_parameters()}
    base = getattr(model, "base_model", model)
    in_base = {id(param) for param in base.parameters()}
    layers = _layer_names(base, names)
    embedding_module = next((getattr(base, name) for name in EMBEDDINGS if hasattr(base, name)), None)
    in_layers = {name for layer in layers for name in layer}
    if isinstance(embedding_module, nn.Module):
        embeddings = tuple(names[id(p)] for p in embedding_module.parameters())
    else:
        embeddings = tuple(names[id(p)] for p in base.parameters()
                           if "embed" in names[id(p)] and names[id(p)] not in in_layers)
    placed = in_layers | set(embeddings)
    return LayerMap(
        embeddings=embeddings,
        layers=layers,
        other=tuple(n for n, p in model.named_parameters() if id(p) in in_base and n not in placed),
        head=tuple(n for n, p in model.named_parameters() if id(p) not in in_base),
    )


def _layer_names(base: nn.Module, names: Mapping[int, str]) -> Tuple[Tuple[str, ...], ...]:
    from torch import nn

    for path in LAYER_LISTS:
        found: Any = base
        for attribute in path.split("."):
            found = getattr(found, attribute, None)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return tuple(tuple(names[id(p)] for p in layer.parameters()) for layer in found)
    by_index: Dict[int, List[str]] = {}
    for param in base.parameters():
        match = LAYER_NAME.search(names[id(param)])
        if match:
            by_index.setdefault(int(match.group(1)), []).append(names[id(param)])
    return tuple(tuple(by_index[index]) for index in sorted(by_index))


BLOCK_LISTS = ("h", "layers", "block", "blocks", "layer")
"""Attribute names of the module lists that hold a language model's blocks: GPT-2 (``transformer.h``), Llama,
Qwen, Mistral (``model.layers``), T5 (``encoder.block``, ``decoder.block``), BART (``model.encoder.layers`` ...)."""


def generative_layer_map(model: nn.Module) -> LayerMap:
    """Group a language model's parameters: embeddings, blocks (an encoder's first, then a decoder's), the output
    layer as head, and the rest (final norms) as other.

    The head is the pretrained output projection (``lm_head``). When it is tied to the input embeddings (GPT-2,
    T5, BART: one matrix), that matrix is listed once, with the embeddings: freezing the embeddings freezes the
    output projection too, and the head is empty. Pass the plain model, not a peft wrapper.
    """
    from torch import nn

    names = {id(param): name for name, param in model.named_parameters()}
    layers = tuple(tuple(names[id(p)] for p in block.parameters()) for blocks in _block_lists(model)
                   for block in blocks)
    in_layers = {name for layer in layers for name in layer}
    language_model: Any = model  # a transformers PreTrainedModel (its embedding getters are untyped here)
    output = language_model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    own_output = [] if output is None else [p for p in output.parameters() if names.get(id(p)) is not None]
    inputs = {id(p) for p in language_model.get_input_embeddings().parameters()} \
        if hasattr(model, "get_input_embeddings") else set()
    head = tuple(names[id(p)] for p in own_output if id(p) not in inputs)
    embedding_modules = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    embedded = {id(p) for m in embedding_modules for p in m.parameters()} | inputs
    embeddings = tuple(name for name, p in model.named_parameters()
                       if name not in in_layers and name not in head and (id(p) in embedded or "embed" in name))
    placed = in_layers | set(head) | set(embeddings)
    other = tuple(name for name, _ in model.named_parameters() if name not in placed)
    return LayerMap(embeddings=embeddings, layers=layers, other=other, head=head)


def _block_lists(model: nn.Module) -> List[Any]:
    from torch import nn

    found: List[Tuple[str, Any]] = []
    for name, module in model.named_modules():
        inside = any(name.startswith(f"{outer}.") for outer, _ in found)
        if isinstance(module, nn.ModuleList) and len(module) > 0 and name.rsplit(".", 1)[-1] in BLOCK_LISTS \
                and not inside:
            found.append((name, module))
    # an encoder's blocks sit below a decoder's (named_modules keeps registration order otherwise)
    return [module for name, module in sorted(found, key=lambda item: "decoder" in item[0])]
