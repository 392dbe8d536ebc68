"""Tasks whose model is a Hugging Face transformers ``AutoModelFor...`` class with a new head for the data's labels.

Building the pretrained model, its weightless architecture (for preflight), saving and loading the trained one
are the same for text classification and token classification; only the Auto class differs (and what a task adds
to the model's config, e.g. its problem type). ``set_dropout`` is ``model.dropout`` for any transformers config.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Optional, cast

from finesweep.config import ExperimentConfig
from finesweep.errors import ConfigError
from finesweep.tasks.task import PreparedData, Task

if TYPE_CHECKING:
    from torch import nn
    from transformers import PretrainedConfig

DROPOUT_FIELDS = ("hidden_dropout_prob", "classifier_dropout", "dropout", "seq_classif_dropout", "hidden_dropout")
"""Config fields ``model.dropout`` sets where a model has them (BERT/RoBERTa/MiniLM/ViT: the first two,
DistilBERT: dropout + seq_classif_dropout). Attention dropout keeps the pretrained value."""


class TransformersHeadTask(Task):
    """A ``Task`` whose model is ``transformers.<auto_class>`` with a new head of ``num_outputs`` outputs.

    Attributes:
        auto_class: the transformers Auto class's name (``AutoModelForSequenceClassification`` ...).
    """

    auto_class: ClassVar[str] = ""

    def build_model(self, config: ExperimentConfig, data: PreparedData) -> nn.Module:
        path = config.model.name_or_path
        architecture = self.model_config(path, data, config.model.dropout)
        # A pretrained checkpoint may carry a head for other labels (a fine-tuned model); it is replaced.
        model: nn.Module = self._auto().from_pretrained(path, config=architecture, ignore_mismatched_sizes=True)
        return model

    def architecture(self, config: ExperimentConfig) -> nn.Module:
        from transformers import AutoConfig

        architecture = AutoConfig.from_pretrained(config.model.name_or_path)  # its own head size: no warnings
        if config.model.dropout is not None:
            set_dropout(architecture, config.model.dropout)
        model: nn.Module = self._auto().from_config(architecture)
        return model

    def save_trained(self, model: nn.Module, folder: Path) -> None:
        # safe_serialization: safetensors on transformers 4.x too (5.x writes nothing else)
        cast(Any, model).save_pretrained(folder, safe_serialization=True)  # a transformers PreTrainedModel

    def load_trained(self, folder: Path, data: PreparedData) -> nn.Module:
        model: nn.Module = self._auto().from_pretrained(folder, config=self.model_config(str(folder), data, None))
        return model

    def model_config(self, path: str, data: PreparedData, dropout: Optional[float]) -> PretrainedConfig:
        """The model's config with this data's head size, label names (``head_config`` adds the rest) and dropout."""
        from transformers import AutoConfig

        architecture: PretrainedConfig = AutoConfig.from_pretrained(path, num_labels=self.num_outputs(data))
        if data.label_names:
            architecture.id2label = dict(enumerate(data.label_names))
            architecture.label2id = {name: index for index, name in enumerate(data.label_names)}
        self.head_config(architecture)
        if dropout is not None:
            set_dropout(architecture, dropout)
        return architecture

    def head_config(self, architecture: PretrainedConfig) -> None:
        """What the task sets on the model's config besides its labels (e.g. ``problem_type``); nothing here."""

    def _auto(self) -> Any:
        import transformers

        return getattr(transformers, self.auto_class)


def set_dropout(architecture: PretrainedConfig, dropout: float) -> None:
    """Set ``model.dropout`` on every dropout field of a transformers config that has one (``DROPOUT_FIELDS``).

    Raises:
        ConfigError: the config has none of them.
    """
    fields = [name for name in DROPOUT_FIELDS if hasattr(architecture, name)]
    if not fields:
        raise ConfigError(f"model.dropout needs a model config with one of {', '.join(DROPOUT_FIELDS)}, "
                          f"got {type(architecture).__name__} with none of them. Use model.dropout=null.")
    for name in fields:
        setattr(architecture, name, dropout)
