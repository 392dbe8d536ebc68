"""Image classifiers from Hugging Face transformers and from timm, behind one small face.

``model.name_or_path`` names either kind:

- a Hugging Face model (hub id or local folder with a transformers ``config.json``): ViT, DeiT, BEiT, DINOv2,
  Swin, ConvNeXt, ResNet, EfficientNet ... through ``AutoModelForImageClassification``, preprocessed as its
  ``AutoImageProcessor`` says (size, crop, mean and std);
- a timm model: ``timm/<name>`` (a hub id) or a local folder with timm's ``config.json`` (it has an
  ``architecture`` key) and its weights, through ``timm.create_model`` with its ``pretrained_cfg``.

Each gets a new head for the user's classes. The layer map the strategies work on: a transformer's embeddings
and encoder blocks, a CNN's stem and stages (Hugging Face: ``embedder``/``embeddings`` + ``encoder.stages``;
timm: the model's own coarse ``group_matcher``, as timm's layer-wise lr decay groups it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from finesweep.errors import ConfigError, one_line
from finesweep.tasks.images import Resize
from finesweep.tasks.layers import LayerMap, transformer_layer_map
from finesweep.tasks.transformers_head import set_dropout

if TYPE_CHECKING:
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TIMM_PREFIX = "timm/"


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects of an image: its input size and crop, and the mean and std it was trained with."""

    resize: Resize
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]


def is_timm(name_or_path: str) -> bool:
    """Whether ``model.name_or_path`` is a timm model (``timm/<name>``, or a folder with timm's config.json)."""
    if name_or_path.startswith(TIMM_PREFIX) and not Path(name_or_path).exists():
        return True
    config = Path(name_or_path) / "config.json"
    if not config.is_file():
        return False
    try:
        return "architecture" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def preprocessing(name_or_path: str, image_size: Optional[int]) -> Preprocessing:
    """The model's own preprocessing; ``image_size`` (``data.image_size``) replaces its input size.

    Raises:
        ConfigError: the model's config cannot be read.
    """
    if is_timm(name_or_path):
        return _timm_preprocessing(name_or_path, image_size)
    return _hf_preprocessing(name_or_path, image_size)


def build(name_or_path: str, label_names: Sequence[str], dropout: Optional[float]) -> nn.Module:
    """The pretrained model with a new head for ``label_names``.

    Raises:
        ConfigError: the model cannot be loaded, or has no dropout to set.
    """
    if is_timm(name_or_path):
        return _timm_model(name_or_path, len(label_names), dropout, pretrained=True)
    from transformers import AutoModelForImageClassification

    config = _hf_config(name_or_path, label_names, dropout)
    # A checkpoint may carry a head for other classes (ImageNet's 1000): it is replaced.
    model: nn.Module = AutoModelForImageClassification.from_pretrained(name_or_path, config=config,
                                                                       ignore_mismatched_sizes=True)
    return model


def architecture(name_or_path: str, dropout: Optional[float]) -> nn.Module:
    """The model without weights (the caller builds it on the meta device)."""
    if is_timm(name_or_path):
        return _timm_model(name_or_path, None, dropout, pretrained=False)
    from transformers import AutoModelForImageClassification

    config = _load_hf_config(name_or_path)
    if dropout is not None:
        set_dropout(config, dropout)
    model: nn.Module = AutoModelForImageClassification.from_config(config)
    return model


def save(model: nn.Module, folder: Path) -> None:
    """Trained weights (safetensors) and the config that rebuilds the model (its head too), as its library writes
    them."""
    if is_hf(model):
        model.save_pretrained(folder, safe_serialization=True)  # type: ignore[operator]
        return
    from timm.models import save_for_hf

    save_for_hf(model, str(folder), safe_serialization=True)


def load(folder: Path) -> nn.Module:
    """A model ``save`` wrote, its head as trained."""
    if is_timm(str(folder)):
        import timm

        model: nn.Module = timm.create_model(f"local-dir:{folder}", pretrained=True)
        return model
    from transformers import AutoModelForImageClassification

    hf: nn.Module = AutoModelForImageClassification.from_pretrained(folder)
    return hf


def is_hf(model: nn.Module) -> bool:
    """Whether the (unwrapped) model is a transformers model (called with ``pixel_values=``, answers ``.logits``)."""
    from transformers import PreTrainedModel

    return isinstance(_plain(model), PreTrainedModel)


def layer_map(model: nn.Module) -> LayerMap:
    """Stem, ordered blocks (a transformer's layers, a CNN's stages), and head of either kind of model."""
    if is_hf(model):
        return transformer_layer_map(model)
    return _timm_layer_map(model)


# --- Hugging Face ------------------------------------------------------------------------------------------

def _load_hf_config(name_or_path: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.name_or_path: cannot load a model config from {name_or_path!r} "
                          f"({one_line(exc)}). Point it at a Hugging Face image model folder, a timm folder, "
                          "timm/<name>, or (online) a hub id.") from None


def _hf_config(name_or_path: str, label_names: Sequence[str], dropout: Optional[float]) -> Any:
    config = _load_hf_config(name_or_path)
    config.num_labels = len(label_names)
    config.id2label = dict(enumerate(label_names))
    config.label2id = {name: index for index, name in enumerate(label_names)}
    config.problem_type = "single_label_classification"
    if dropout is not None:
        set_dropout(config, dropout)
    return config


def _hf_preprocessing(name_or_path: str, image_size: Optional[int]) -> Preprocessing:
    from transformers import AutoImageProcessor

    config = _load_hf_config(name_or_path)
    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError, ImportError):  # no preprocessor_config.json: the config's size, ImageNet statistics
        processor = None
    size_spec: Dict[str, int] = dict(getattr(processor, "size", None) or {})
    crop_spec: Dict[str, int] = dict(getattr(processor, "crop_size", None) or {})
    crop_pct = getattr(processor, "crop_pct", None)
    resized = size_spec.get("shortest_edge") or size_spec.get("height") or _config_size(config)
    if getattr(processor, "do_center_crop", False) and crop_spec.get("height"):  # DeiT, BEiT, DINOv2: resize, crop
        size, crop_pct = crop_spec["height"], crop_spec["height"] / resized
    elif "shortest_edge" in size_spec:
        size = resized
        crop_pct = crop_pct if crop_pct is not None and size < 384 else 1.0  # ConvNeXt's rule: no crop from 384
    else:
        size, crop_pct = resized, None
    mean = tuple(getattr(processor, "image_mean", None) or IMAGENET_MEAN)
    std = tuple(getattr(processor, "image_std", None) or IMAGENET_STD)
    return Preprocessing(Resize(image_size or int(size), crop_pct), _three(mean), _three(std))


def _config_size(config: Any) -> int:
    size = getattr(config, "image_size", None) or 224
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def _three(values: Sequence[Any]) -> Tuple[float, float, float]:
    floats = [float(v) for v in values] * (3 if len(values) == 1 else 1)
    return floats[0], floats[1], floats[2]


# --- timm --------------------------------------------------------------------------------------------------

def _timm_source(name_or_path: str) -> str:
    return f"local-dir:{name_or_path}" if Path(name_or_path).is_dir() else f"hf-hub:{name_or_path}"


def _timm_model(name_or_path: str, classes: Optional[int], dropout: Optional[float], pretrained: bool) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise ConfigError(f"model.name_or_path: {name_or_path!r} is a timm model, but timm is not installed. "
                          "Install it: pip install 'finesweep[vision]'.") from None
    kwargs: Dict[str, Any] = {} if classes is None else {"num_classes": classes}
    if dropout is not None:
        kwargs["drop_rate"] = dropout
    try:
        model: nn.Module = timm.create_model(_timm_source(name_or_path), pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"model.name_or_path: cannot load the timm model {name_or_path!r} ({one_line(exc)}). "
                          "Point it at a folder with timm's config.json and weights, or (online) timm/<name>."
                          ) from None
    return model


def _timm_preprocessing(name_or_path: str, image_size: Optional[int]) -> Preprocessing:
    from timm.data import resolve_data_config  # type: ignore[attr-defined]

    model = _timm_model(name_or_path, None, None, pretrained=False)
    config: Dict[str, Any] = resolve_data_config(model=model)  # type: ignore[no-untyped-call]
    size = image_size or int(config["input_size"][-1])
    return Preprocessing(Resize(size, float(config.get("crop_pct") or 1.0)), _three(config["mean"]),
                         _three(config["std"]))


def _timm_layer_map(model: nn.Module) -> LayerMap:
    """timm's coarse parameter groups: the stem, then each stage or block; the classifier is the head.

    ``model`` is the plain model (LoRA's adapters injected), as ``Task.layer_map`` receives it."""
    timm_model: Any = model  # timm's models have get_classifier and group_matcher; torch's stubs do not say so
    classifier = timm_model.get_classifier() if hasattr(model, "get_classifier") else None
    names = {id(p): n for n, p in model.named_parameters()}
    head = tuple(names[id(p)] for p in classifier.parameters()) if classifier is not None else ()
    matcher = timm_model.group_matcher(coarse=True) if hasattr(model, "group_matcher") else {}
    groups = _groups(model, matcher)
    placed = set(head)
    ordered = [tuple(n for n in group if n not in placed) for group in groups]
    matched = [group for group in ordered if group and any(_matches(matcher, n) for n in group)]
    embeddings = matched[0] if matched and any(_stem(matcher, n) for n in matched[0]) else ()
    layers = tuple(group for group in matched if group is not embeddings)
    inside = set(embeddings).union(*layers) | placed
    other = tuple(n for n in names.values() if n not in inside)
    return LayerMap(embeddings=embeddings, layers=layers, other=other, head=head)


def _groups(model: nn.Module, matcher: Any) -> List[List[str]]:
    from timm.models import group_parameters

    if not matcher:
        return [[n for n, _ in model.named_parameters()]]
    by_id = group_parameters(model, matcher)
    return [list(by_id[key]) for key in sorted(by_id)]


def _patterns(matcher: Any) -> List[Tuple[str, str]]:
    found: List[Tuple[str, str]] = []
    for name, spec in dict(matcher).items():
        if spec is None:
            continue
        specs = [s[0] for s in spec] if isinstance(spec, (list, tuple)) else [spec]
        found += [(name, pattern) for pattern in specs]
    return found


def _matches(matcher: Any, name: str) -> bool:
    return any(re.match(pattern, name) for _, pattern in _patterns(matcher))


def _stem(matcher: Any, name: str) -> bool:
    return any(re.match(pattern, name) for group, pattern in _patterns(matcher) if group == "stem")


def _plain(model: nn.Module) -> Any:
    """The model inside a peft wrapper, else the model."""
    base = getattr(model, "get_base_model", None)
    return base() if callable(base) else model
