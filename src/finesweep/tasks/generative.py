"""What causal LM and seq2seq fine-tuning share: the pretrained language model (memory options included), its layer
map, the token-averaged loss and perplexity, saving, and the served model that generates text.

The model is ``transformers.<auto_class>.from_pretrained`` of ``model.name_or_path`` (a hub id or a local folder),
head and all: nothing is new. ``model.gradient_checkpointing`` recomputes activations in the backward pass
(``use_reentrant=False``, the KV cache off); ``model.load_in_4bit`` loads the frozen base in 4-bit NF4 with double
quantisation and bf16 compute (QLoRA: bitsandbytes on a CUDA GPU; the config already requires LoRA and a GPU per
trial) and prepares it with peft's ``prepare_model_for_kbit_training``.

What ``finetune.strategy`` trains (``generative_layer_map``): the head is the pretrained output projection
(``lm_head``). ``head_only`` trains that projection alone, and ``gradual_unfreeze`` starts from it; a model whose
output projection is tied to its input embeddings (GPT-2, T5, BART) has no head weights of its own, so both are
refused for it up front rather than silently training the embeddings. ``freeze`` freezes the (tied) embedding
matrix with the bottom blocks, and with it the output projection. LoRA trains adapters only: the pretrained head
stays frozen (``new_head`` is False).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Dict, Mapping, Optional, Tuple, cast

from finesweep.config import ExperimentConfig, Strategy
from finesweep.errors import ConfigError, one_line
from finesweep.tasks.layers import LayerMap, generative_layer_map
from finesweep.tasks.packaging import package_beside
from finesweep.tasks.task import PreparedData, Task
from finesweep.tasks.token_data import IGNORED

if TYPE_CHECKING:
    import torch
    from mlflow.models import ModelSignature
    from torch import nn
    from torchmetrics import MetricCollection
    from transformers import PretrainedConfig, PreTrainedTokenizerBase


DROPOUT_FIELDS = ("resid_pdrop", "embd_pdrop", "dropout_rate", "dropout")
"""Config fields ``model.dropout`` sets on language models: GPT-2 (residual and embedding dropout), T5
(``dropout_rate``), BART (``dropout``). Attention dropout keeps the pretrained value; Llama-family models have
no other dropout, so ``model.dropout`` is refused for them."""

HEAD_STRATEGIES = (Strategy.head_only, Strategy.gradual_unfreeze)
"""Strategies that start from training the head alone."""

SERVING_DEFAULTS = {"max_new_tokens": 64, "temperature": 0.0, "top_p": 1.0}
"""The served model's inference parameters and their defaults (temperature 0 = greedy)."""


class GenerativeTask(Task):
    """A ``Task`` whose model is a pretrained language model, fine-tuned on target tokens.

    Attributes:
        auto_class: the transformers Auto class (``AutoModelForCausalLM``, ``AutoModelForSeq2SeqLM``).
        shift: whether the logits at position i predict the label at i + 1 (causal) or at i (seq2seq).
    """

    auto_class: ClassVar[str] = ""
    shift: ClassVar[bool] = True
    predictor_module: ClassVar[str] = "finesweep.tasks.generation_predictor"
    pip_requirements: ClassVar[Tuple[str, ...]] = ("mlflow", "torch", "transformers", "safetensors", "pandas", "numpy",
                                                   "jinja2")
    breakdown_name: ClassVar[str] = ""
    new_head: ClassVar[bool] = False

    # --- the model --------------------------------------------------------------------------------

    def build_model(self, config: ExperimentConfig, data: PreparedData) -> nn.Module:
        """The pretrained model with ``model.dropout``, ``gradient_checkpointing`` and ``load_in_4bit`` applied.

        Raises:
            ConfigError: a strategy the model's tied head cannot take; 4-bit without CUDA or bitsandbytes.
        """
        path = config.model.name_or_path
        extra: Dict[str, Any] = {}
        if config.model.load_in_4bit:
            import torch

            extra = {"quantization_config": _four_bit(), "device_map": {"": torch.cuda.current_device()}}
        model: nn.Module = self._auto().from_pretrained(path, config=self.model_config(path, config.model.dropout),
                                                        **extra)
        check_strategy(model, config)
        checkpointing = config.model.gradient_checkpointing
        if config.model.load_in_4bit:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
                model, use_gradient_checkpointing=checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False})
        elif checkpointing:
            cast(Any, model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if checkpointing:
            cast(Any, model).config.use_cache = False  # a cache is kept for generation, and recomputing breaks it
        return model

    def architecture(self, config: ExperimentConfig) -> nn.Module:
        model: nn.Module = self._auto().from_config(self.model_config(config.model.name_or_path, config.model.dropout))
        check_strategy(model, config)
        return model

    def model_config(self, path: str, dropout: Optional[float]) -> PretrainedConfig:
        """The pretrained model's config, with ``model.dropout`` set where the model has a dropout field.

        Raises:
            ConfigError: no config at ``path``; ``model.dropout`` on a model without a dropout field.
        """
        from transformers import AutoConfig

        try:
            architecture: PretrainedConfig = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"model.name_or_path: cannot load a model config from {path!r} ({one_line(exc)}). "
                              "Point it at a Hugging Face model folder (with config.json) or, when online, a hub "
                              "id.") from None
        if dropout is not None:
            fields = [name for name in DROPOUT_FIELDS if hasattr(architecture, name)]
            if not fields:
                raise ConfigError(f"model.dropout needs a model config with one of {', '.join(DROPOUT_FIELDS)}, got "
                                  f"{type(architecture).__name__} with none of them. Use model.dropout=null.")
            for name in fields:
                setattr(architecture, name, dropout)
        return architecture

    def save_trained(self, model: nn.Module, folder: Path) -> None:
        """``save_pretrained`` in safetensors (LoRA arrives merged: ``FinetuneModule.export_model``)."""
        cast(Any, model).save_pretrained(folder, safe_serialization=True)

    def load_trained(self, folder: Path, data: PreparedData) -> nn.Module:
        model: nn.Module = self._auto().from_pretrained(folder)
        return model

    def layer_map(self, model: nn.Module) -> LayerMap:
        """Embeddings, blocks (encoder before decoder), the pretrained output projection as head (see the module
        docstring for tied heads)."""
        return generative_layer_map(model)

    def _auto(self) -> Any:
        import transformers

        return getattr(transformers, self.auto_class)

    # --- training ---------------------------------------------------------------------------------

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
        """Cross entropy averaged over the target tokens (labels other than -100), next-token shifted for causal
        models; 0 (with a gradient) for a batch without any target token."""
        from torch import nn

        logits, targets = (outputs[:, :-1], labels[:, 1:]) if self.shift else (outputs, labels)
        flat = targets.reshape(-1)
        summed = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), flat,
                                             ignore_index=IGNORED, reduction="sum", label_smoothing=smoothing)
        return summed / (flat != IGNORED).sum().clamp(min=1)

    def loss_weight(self, labels: torch.Tensor) -> int:
        """The batch's target tokens (after the shift): ``val/loss`` is then the split's token average."""
        targets = labels[:, 1:] if self.shift else labels
        return int((targets != IGNORED).sum())

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        """The logits themselves: perplexity needs them with the labels."""
        return outputs

    def metrics(self, data: PreparedData, prefix: str) -> MetricCollection:
        from torchmetrics import MetricCollection

        from finesweep.tasks.metrics import TokenPerplexity

        return MetricCollection({"perplexity": TokenPerplexity(shift=self.shift)}, prefix=prefix)

    # --- serving ----------------------------------------------------------------------------------

    def serving_meta(self, config: ExperimentConfig, data: PreparedData) -> Dict[str, Any]:
        return {"task": self.name, "auto_class": self.auto_class, "chat": self.chat(data),
                "max_length": config.data.max_length, "max_new_tokens": config.data.max_target_length,
                "objective": config.objective.metric}

    def chat(self, data: PreparedData) -> bool:
        """Whether the model was tuned on chats (the served model then renders its prompts as chats)."""
        return False

    def signature(self, meta: Mapping[str, Any]) -> ModelSignature:
        """Input: a string column ``prompt``; for chat-tuned models also ``messages``, an array of ``{role,
        content}`` objects (a row uses it when it has one). Output: a string column ``generation``. Inference
        parameters: ``max_new_tokens``, ``temperature`` (0 = greedy) and ``top_p``."""
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
        from mlflow.types.schema import Array, Object, Property

        inputs = [ColSpec("string", "prompt", required=not meta.get("chat"))]
        if meta.get("chat"):
            turn = Object([Property("role", "string"), Property("content", "string")])
            inputs.append(ColSpec(Array(turn), "messages", required=False))
        params = ParamSchema([
            ParamSpec("max_new_tokens", "long", int(meta.get("max_new_tokens", SERVING_DEFAULTS["max_new_tokens"]))),
            ParamSpec("temperature", "double", SERVING_DEFAULTS["temperature"]),
            ParamSpec("top_p", "double", SERVING_DEFAULTS["top_p"]),
        ])
        return ModelSignature(Schema(inputs), Schema([ColSpec("string", "generation")]),  # type: ignore[arg-type]
                              params=params)

    def package(self, folder: Path, preprocessor: str, meta: Mapping[str, Any]) -> None:
        package_beside(folder, meta, load_tokenizer(preprocessor))

    def request_example(self, meta: Mapping[str, Any]) -> Dict[str, Any]:
        row: Dict[str, Any] = {"prompt": "Summarise: the meeting moved to Friday because the room was booked."}
        if meta.get("chat"):
            row = {"messages": [{"role": "user", "content": row["prompt"]}]}
        return {"dataframe_records": [row], "params": {"max_new_tokens": 32, "temperature": 0.0}}


def check_strategy(model: nn.Module, config: ExperimentConfig) -> None:
    """Refuse ``head_only`` and ``gradual_unfreeze`` on a model whose output projection is its input embedding
    matrix: it has no head weights of its own to start from.

    Raises:
        ConfigError: naming the model and the fix.
    """
    strategy = config.finetune.strategy
    if strategy in HEAD_STRATEGIES and not generative_layer_map(model).head:
        raise ConfigError(f"finetune.strategy={strategy.value} starts from the language-model head alone, but "
                          f"{type(model).__name__}'s output layer is tied to its input embeddings (no weights of its "
                          f"own), got strategy={strategy.value}. Use finetune.strategy=lora, freeze or full.")


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token (its eos when it has none, as GPT-2's; labels tell them apart).

    Raises:
        ConfigError: no tokenizer at ``path``.
    """
    return _cached_tokenizer(path)


@functools.lru_cache(maxsize=4)
def _cached_tokenizer(path: str) -> PreTrainedTokenizerBase:
    # Cached: generation at every report loads it again. Callers never change it (they pad by hand).
    from transformers import AutoTokenizer

    try:
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.name_or_path: cannot load a tokenizer from {path!r} ({one_line(exc)}). Point it "
                          "at a Hugging Face model folder (with its tokenizer files) or, when online, a hub id."
                          ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _four_bit() -> Any:
    """bitsandbytes' 4-bit NF4 quantisation with double quantisation and bf16 compute.

    Raises:
        ConfigError: no CUDA GPU here, or bitsandbytes is not installed.
    """
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("model.load_in_4bit needs a CUDA GPU (bitsandbytes' 4-bit kernels), got none on this "
                          "machine. Run the trials on a GPU (cluster.gpus_per_trial=1), or set "
                          "model.load_in_4bit=false.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("model.load_in_4bit needs the bitsandbytes package, got it not installed. Install it "
                          "(pip install 'finesweep[generative]'), or set model.load_in_4bit=false.")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def model_type(model: nn.Module) -> str:
    """``config.model_type`` of a transformers model, inside a peft wrapper too (``gpt2``, ``llama``, ``t5`` ...)."""
    config: Any = getattr(plain_model(model), "config", None)
    return str(getattr(config, "model_type", ""))


def plain_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside a peft wrapper (adapters injected), else the model."""
    base = getattr(model, "get_base_model", None)
    found: nn.Module = base() if callable(base) else model
    return found
