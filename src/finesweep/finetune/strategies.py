"""Fine-tuning strategies: which weights of a model train, and at which learning rate.

Every strategy shares the one training loop of ``module.py`` and works on the model's layer map (its
embeddings, ordered blocks and head), which the task provides (``Task.layer_map``): the same strategies fine-tune
a text encoder's layers or a CNN's stages. A strategy only freezes parameters before the optimiser is built
(head_only, freeze), wraps the model (lora) or adds a Lightning callback that unfreezes during the fit
(gradual_unfreeze). Layer-wise lr decay is orthogonal to all of them: it shapes the optimiser's parameter groups
(``param_groups``).

Adding a strategy is one subclass of ``FinetuneStrategy`` and one line in ``STRATEGIES``.
"""

from __future__ import annotations

import copy
import sys
from typing import Any, Callable, Dict, Iterable, List, Sequence, Tuple, cast

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.optim import Optimizer

from finesweep.config import FinetuneConfig, LoraConfig, OptimConfig, Strategy
from finesweep.errors import ConfigError, one_line
from finesweep.tasks import LayerMap, Task

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
"""Parameters AdamW does not decay: biases and normalisation gains, as in BERT's recipe; every parameter of
fewer than 2 dimensions is one of them too (nanoGPT's rule: GPT-2 calls its gains ``ln_1.weight``)."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain Hugging Face model inside a peft wrapper (with its adapters injected), else the model."""
    peft = sys.modules.get("peft")  # only a LoRA trial imports peft; nothing else can be wrapped
    if peft is not None and isinstance(model, peft.PeftModel):
        base: nn.Module = model.get_base_model()
        return base
    return model


def set_trainable(model: nn.Module, names: Iterable[str]) -> None:
    """Let exactly the named parameters train; freeze every other one."""
    wanted = set(names)
    for name, param in model.named_parameters():
        param.requires_grad = name in wanted


def lr_multipliers(parts: LayerMap, llrd: float, head_lr_mult: float) -> Dict[str, float]:
    """Each parameter's multiple of ``optim.lr`` under layer-wise lr decay.

    Encoder layer l of L (1-based, top = L) gets llrd^(L - l), the embeddings llrd^L, the head
    ``head_lr_mult`` and the rest of the base model (it sits above the top layer) 1.
    """
    top = parts.num_layers
    multipliers = {name: llrd ** top for name in parts.embeddings}
    for depth, layer in enumerate(parts.layers, start=1):
        multipliers.update({name: llrd ** (top - depth) for name in layer})
    multipliers.update({name: 1.0 for name in parts.other})
    multipliers.update({name: head_lr_mult for name in parts.head})
    return multipliers


def param_groups(model: nn.Module, parts: LayerMap, optim: OptimConfig, finetune: FinetuneConfig
                 ) -> List[Dict[str, Any]]:
    """AdamW parameter groups, one per (learning rate, weight decay) pair, holding EVERY parameter.

    Frozen parameters are included on purpose: their ``grad`` stays None, and torch's AdamW skips a
    parameter without a gradient entirely (no moment update, no weight decay), so they do not move.
    When gradual unfreezing switches a layer on, it trains from its next step at its own LLRD rate
    and on the one warmup/decay schedule. BaseFinetuning's ``unfreeze_and_add_param_group`` would
    instead add groups the LambdaLR scheduler was not built with, leaving those layers off the
    schedule at an lr of its own choosing.

    Args:
        model: the plain model (see ``unwrap``), adapters included.
        parts: its layer map.
        optim: base learning rate and weight decay.
        finetune: ``llrd`` and ``head_lr_mult``.

    Raises:
        ConfigError: ``finetune.llrd`` below 1 on a model without detectable encoder layers.
    """
    if finetune.llrd != 1.0 and parts.num_layers == 0:
        raise ConfigError(f"finetune.llrd needs encoder layers, but none were found in {type(model).__name__}, "
                          f"got llrd={finetune.llrd}. Use finetune.llrd=1.0.")
    multipliers = lr_multipliers(parts, finetune.llrd, finetune.head_lr_mult)
    groups: Dict[Tuple[float, float], List[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        decay = 0.0 if param.dim() < 2 or name.endswith(NO_DECAY) else optim.weight_decay
        groups.setdefault((optim.lr * multipliers[name], decay), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]


class FinetuneStrategy:
    """Full fine-tuning (every weight trains), and the base every other strategy refines.

    Args:
        task: where the layers of the task's models are (``Task.layer_map``).
    """

    def __init__(self, task: Task) -> None:
        self.task = task

    def apply(self, model: nn.Module) -> nn.Module:
        """Set which parameters train (or wrap the model) before the optimiser is built.

        Returns:
            The model to train: the same one, or a wrapper around it.
        """
        return model

    def callbacks(self, model: nn.Module) -> List[pl.Callback]:
        """Lightning callbacks the strategy needs while ``model`` (what ``apply`` returned) trains."""
        return []

    def export(self, model: nn.Module) -> nn.Module:
        """A plain Hugging Face model with the trained weights, ready for ``save_pretrained``."""
        return model


class HeadOnly(FinetuneStrategy):
    """Linear probe: only the head trains; the whole base model (pooler too) is frozen."""

    def apply(self, model: nn.Module) -> nn.Module:
        set_trainable(model, _require_head(self.task.layer_map(model), model, Strategy.head_only).head)
        return model


class FreezeBottom(FinetuneStrategy):
    """The embeddings and the bottom ``layers`` encoder layers are frozen; the rest trains.

    Args:
        task: where the layers are.
        layers: how many encoder layers, from the bottom, stay frozen.
    """

    def __init__(self, task: Task, layers: int) -> None:
        super().__init__(task)
        self.layers = layers

    def apply(self, model: nn.Module) -> nn.Module:
        parts = self.task.layer_map(model)
        if self.layers > parts.num_layers:
            raise ConfigError(f"finetune.freeze_layers must be <= the model's {parts.num_layers} encoder layers, "
                              f"got {self.layers}. Lower it.")
        frozen = set(parts.embeddings).union(*parts.layers[:self.layers])
        set_trainable(model, [name for name, _ in model.named_parameters() if name not in frozen])
        return model


def unfrozen_at(parts: LayerMap, stage: int) -> Tuple[str, ...]:
    """Parameters trainable at a gradual-unfreezing stage.

    Stage 0 is the head alone; stage k adds the top k encoder layers (and, from stage 1, the rest of
    the base model above them, e.g. the pooler); the stage after the bottom layer adds the
    embeddings, so a long enough trial ends as full fine-tuning.
    """
    names = list(parts.head)
    if stage >= 1:
        names += parts.other
    for layer in parts.layers[max(0, parts.num_layers - stage):]:
        names += layer
    if stage > parts.num_layers:
        names += parts.embeddings
    return tuple(names)


class GradualUnfreeze(BaseFinetuning):
    """Starts with the head only and unfreezes one more encoder layer, from the top, every ``every`` epochs.

    Every parameter is in the optimiser from the start (see ``param_groups``), so unfreezing only
    flips ``requires_grad``; the optimiser argument of ``finetune_function`` is not needed.

    Args:
        model: the plain model being trained.
        parts: its layer map.
        every: epochs between two unfreezing steps.
    """

    def __init__(self, model: nn.Module, parts: LayerMap, every: int) -> None:
        super().__init__()
        self.model = model
        self.parts = _require_head(parts, model, Strategy.gradual_unfreeze)
        self.every = every

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        set_trainable(self.model, unfrozen_at(self.parts, 0))

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer) -> None:
        set_trainable(self.model, unfrozen_at(self.parts, epoch // self.every))


class GradualUnfreezeStrategy(FinetuneStrategy):
    """``gradual_unfreeze``: stage 0 (head only) at once, then the ``GradualUnfreeze`` callback's schedule.

    Args:
        task: where the layers are.
        every: ``finetune.unfreeze_every``.
    """

    def __init__(self, task: Task, every: int) -> None:
        super().__init__(task)
        self.every = every

    def apply(self, model: nn.Module) -> nn.Module:
        set_trainable(model, unfrozen_at(_require_head(self.task.layer_map(model), model, Strategy.gradual_unfreeze),
                                         0))
        return model

    def callbacks(self, model: nn.Module) -> List[pl.Callback]:
        return [GradualUnfreeze(model, self.task.layer_map(model), self.every)]


class Lora(FinetuneStrategy):
    """LoRA adapters (peft) on ``target_modules``; the base model is frozen, the head trains in full.

    Args:
        task: where the head is, and peft's task type for its models.
        lora: rank, alpha, dropout and target modules.
    """

    def __init__(self, task: Task, lora: LoraConfig) -> None:
        super().__init__(task)
        self.lora = lora

    def apply(self, model: nn.Module) -> nn.Module:
        from peft import LoraConfig as PeftLoraConfig
        from peft import TaskType, get_peft_model

        # SEQ_CLS already keeps "classifier"/"score" trainable; naming the head's own top-level
        # modules also covers heads with more than one (DistilBERT's pre_classifier + classifier). A pretrained
        # head (a language model's, tied to its embeddings) stays frozen: LoRA alone adapts the model.
        head_modules = self.task.layer_map(model).head_modules() if self.task.new_head else []
        task_type = TaskType[self.task.lora_task_type] if self.task.lora_task_type else None
        config = PeftLoraConfig(task_type=task_type, r=self.lora.r, lora_alpha=self.lora.alpha,
                                lora_dropout=self.lora.dropout, target_modules=peft_targets(self.lora.target_modules),
                                modules_to_save=head_modules or None)
        try:
            return get_peft_model(model, config)
        except ValueError as exc:
            raise ConfigError(f"finetune.lora.target_modules must name linear or convolution layers of the model, "
                              f"got {list(self.lora.target_modules)} ({one_line(exc)}). Use e.g. [query, value] "
                              "for BERT-like models, [q_proj, v_proj] for ViT, [convolution] for a Hugging Face "
                              "ResNet.") from None

    def export(self, model: nn.Module) -> nn.Module:
        # Merging a deep copy leaves the live model's adapters in place, so training can go on
        # after a checkpoint; the copy costs one model's memory for the duration of the save.
        merged: nn.Module = cast(Any, copy.deepcopy(model)).merge_and_unload()  # a peft PeftModel
        return merged


AUTO_TARGETS = "auto"
"""``finetune.lora.target_modules: [auto]``: peft's own choice for the architecture (its per-model-type table:
Llama, Qwen, Mistral: q_proj, v_proj; GPT-2: c_attn; T5: q, v; BERT: query, value ...)."""
ALL_LINEAR = "all-linear"
"""``[all-linear]``: every linear layer but the output head (QLoRA's recipe)."""


def peft_targets(names: Sequence[str]) -> Any:
    """What peft's ``target_modules`` takes for ``finetune.lora.target_modules``: None for ``[auto]`` (peft then
    looks the architecture up), the string ``all-linear`` for ``[all-linear]``, else the list of names."""
    if list(names) == [AUTO_TARGETS]:
        return None
    if list(names) == [ALL_LINEAR]:
        return ALL_LINEAR
    return list(names)


def _require_head(parts: LayerMap, model: nn.Module, strategy: Strategy) -> LayerMap:
    if not parts.head:
        raise ConfigError(f"finetune.strategy={strategy.value} needs a classification head outside the base "
                          f"model, but found none in {type(model).__name__}. Use finetune.strategy=full.")
    return parts


STRATEGIES: Dict[Strategy, Callable[[FinetuneConfig, Task], FinetuneStrategy]] = {
    Strategy.full: lambda finetune, task: FinetuneStrategy(task),
    Strategy.head_only: lambda finetune, task: HeadOnly(task),
    Strategy.freeze: lambda finetune, task: FreezeBottom(task, finetune.freeze_layers),
    Strategy.gradual_unfreeze: lambda finetune, task: GradualUnfreezeStrategy(task, finetune.unfreeze_every),
    Strategy.lora: lambda finetune, task: Lora(task, finetune.lora),
}


def make_strategy(finetune: FinetuneConfig, task: Task) -> FinetuneStrategy:
    """The strategy object ``finetune.strategy`` names, for the models of ``task``."""
    return STRATEGIES[finetune.strategy](finetune, task)
