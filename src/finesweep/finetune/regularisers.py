"""Penalties added to the training loss: L2-SP (towards the pretrained weights) and L1 (towards zero).

L2-SP (Li, Grandvalet, Davoine 2018, "Explicit inductive bias for transfer learning with convolutional
networks") replaces weight decay's pull towards zero, which for a pretrained backbone means towards forgetting,
with a pull towards the starting point: ``strength / 2 * sum ||w - w0||^2`` over the backbone's trainable
weights. A new head has no pretrained value (a classifier built for the data) and is left alone, as in the paper;
a language model's head is its own pretrained output layer (``Task.new_head`` false) and is pulled back too.

With LoRA the backbone's weights are frozen and what trains is each adapted layer's low-rank update: the
weight the layer computes with is ``w0 + scale * B @ A``, so ``w - w0`` IS ``scale * B @ A`` and L2-SP
penalises ``||scale * B @ A||^2`` (the Frobenius norm of the update a merge would add), with no snapshot at all.

Neither penalty holds state that a checkpoint needs: L2SP's snapshot is rebuilt from the freshly built
pretrained model whenever a trial (re)starts, so it is never in the Lightning checkpoint nor in the optimiser's
state, and a resumed trial still pulls towards the pretrained weights, not towards those it resumed from.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple, cast

import torch
from torch import nn

from finesweep.finetune.strategies import unwrap
from finesweep.tasks import LayerMap


class L2SP:
    """L2-SP: ``strength / 2 * sum ||w - w0||^2`` over the trainable backbone weights; ``w0`` is pretrained.

    Contract: build it right after the task's model is built from the pretrained weights (and the strategy
    applied), before any optimiser step and before a checkpoint's weights are restored: what the model holds
    then IS the pretrained value. ``FinetuneModule.__init__`` is that moment: Lightning restores a checkpoint
    only inside ``fit``.

    What is snapshotted (detached copies on each parameter's own device and dtype, never in a checkpoint):

    - a plain model: every backbone parameter (embeddings, blocks, pooler), frozen or not. A frozen one is not
      penalised, but gradual unfreezing may switch it on later, and from then on it must be pulled towards its
      pretrained value; after a resume, only a snapshot taken now still knows that value. The cost is one copy
      of the backbone (as much as one AdamW moment); ``freeze`` and ``head_only`` pay it for layers that never
      train (they cannot be told apart from layers a callback will unfreeze).
    - a peft (LoRA) model: only trainable backbone parameters outside the adapters (none with finesweep's LoRA).
      Its base weights are frozen for good; the adapters have no pretrained value: they are penalised through
      their update ``scale * B @ A``, computed as ``scale^2 * sum((B^T B) * (A A^T))``, which needs r x r
      matrices, never the full ``(out, in)`` update.

    Args:
        model: the model as the strategy returned it (plain, or peft-wrapped).
        parts: ``task.layer_map(unwrap(model))``.
        strength: ``finetune.l2sp``: the penalty's coefficient, per squared unit of weight.
        new_head: ``task.new_head``: whether ``parts.head`` is new (excluded) or the model's own pretrained
            output layer (penalised like the backbone).
    """

    def __init__(self, model: nn.Module, parts: LayerMap, strength: float, *, new_head: bool = True) -> None:
        self.strength = strength
        plain = unwrap(model)
        wrapped = plain is not model
        excluded = set(parts.head) if new_head else set()
        backbone = set(parts.embeddings).union(*parts.layers, parts.other, parts.head) - excluded
        lora = list(_lora_layers(plain, excluded))
        adapter_params = {id(param) for _, module in lora for param in module.parameters()
                          if not _in_base_layer(module, param)}
        self.snapshot: Dict[str, torch.Tensor] = {
            name: param.detach().clone() for name, param in plain.named_parameters()
            if name in backbone and id(param) not in adapter_params and param.is_floating_point()
            and (param.requires_grad or not wrapped)}
        """Parameter name (as ``unwrap(model).named_parameters()`` gives it) -> its pretrained value."""
        self.adapters: Tuple[str, ...] = tuple(name for name, _ in lora)
        """The LoRA layers (module names) whose update is penalised."""

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """``strength / 2 * sum ||w - w0||^2`` over the parameters that train now; 0-dim, float32, on the model's
        device, differentiable (its gradient w.r.t. ``w`` is ``strength * (w - w0)``).

        Raises:
            RuntimeError: ``model`` is not the model this was built on (a parameter is missing).
        """
        plain = unwrap(model)
        params = dict(plain.named_parameters())
        terms: List[torch.Tensor] = []
        for name, start in self.snapshot.items():
            param = params.get(name)
            if param is None:
                raise RuntimeError(f"L2SP was built on a model with {name}, but penalty got one without it: pass "
                                   "the model the strategy returned, the one L2SP was built on")
            if param.requires_grad:
                terms.append(self._squared_distance(name, param, start))
        if self.adapters:
            modules = dict(plain.named_modules())
            terms.extend(_lora_squared_norm(modules[name]) for name in self.adapters)
        if not terms:
            return torch.zeros((), dtype=torch.float32, device=_device(plain))
        return 0.5 * self.strength * torch.stack(terms).sum()

    def _squared_distance(self, name: str, param: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        if start.device != param.device:  # Lightning moves the model after the module (and this) is built
            start = self.snapshot[name] = start.to(param.device)
        return (param.float() - start.float()).pow(2).sum()


def l1_penalty(model: nn.Module, strength: float) -> torch.Tensor:
    """``strength * sum |w|`` over the trainable weight matrices, convolution kernels and embeddings.

    Biases and normalisation gains (every parameter of fewer than 2 dimensions, as nanoGPT decides what to
    decay) are left out: sparsity is a prior on which connections matter; a LayerNorm gain pulled to 0 silences
    its whole layer and a bias is no connection. Under LoRA the trainable matrices are the adapters' factors
    and the head.

    Returns:
        A 0-dim float32 tensor on the model's device; 0 when nothing qualifies.
    """
    terms = [param.float().abs().sum() for param in model.parameters() if param.requires_grad and param.dim() >= 2]
    if not terms:
        return torch.zeros((), dtype=torch.float32, device=_device(model))
    return strength * torch.stack(terms).sum()


def _lora_layers(plain: nn.Module, excluded: Set[str]) -> Iterator[Tuple[str, Any]]:
    """(name, module) of each peft LoRA layer with no adapter parameter among ``excluded`` (a new head)."""
    if "peft" not in sys.modules:  # only a LoRA trial imports peft: no adapters without it
        return
    from peft.tuners.lora import LoraLayer

    for name, module in plain.named_modules():
        if isinstance(module, LoraLayer) and not any(f"{name}.{key}" in excluded for key, _ in
                                                     cast(nn.Module, module).named_parameters()):
            yield name, module


def _lora_squared_norm(layer: Any) -> torch.Tensor:
    """``sum over active adapters of ||scale * B @ A||_F^2``; ``||BA||^2 = tr(B^T B A A^T)`` keeps it r x r."""
    terms = [torch.zeros((), dtype=torch.float32, device=_device(layer))]
    for adapter in layer.active_adapters:
        factors = _factors(layer, adapter)
        if factors is None or not factors[0].requires_grad:
            continue
        a, b = (factor.float() for factor in factors)
        terms.append(layer.scaling[adapter] ** 2 * ((b.t() @ b) * (a @ a.t())).sum())  # two (r, r) matrices
    return torch.stack(terms).sum()


def _factors(layer: Any, adapter: str) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """(A as ``(r, fan_in)``, B as ``(fan_out, r)``) of one adapter, or None when the layer lacks it."""
    if adapter in layer.lora_A:  # linear and convolution layers: modules; B of a convolution is 1x1
        a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
        return a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    if adapter in layer.lora_embedding_A:  # embeddings: the matrices themselves, A (r, num), B (dim, r)
        return layer.lora_embedding_A[adapter], layer.lora_embedding_B[adapter]
    return None


def _in_base_layer(module: Any, param: nn.Parameter) -> bool:
    return any(param is p for p in module.get_base_layer().parameters())


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))
