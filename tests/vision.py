"""Tiny image data and tiny image models for the tests, built locally (no downloads).

Images are drawn with Pillow: each class is a shape of its own colour (a red disc, a blue square, green stripes,
...) at a random place and size on a noisy background, which a tiny model learns in a few epochs. They are saved
in several formats and modes (JPEG RGB, PNG palette and RGBA, WebP, grayscale BMP), as real folders mix them.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("disc", "square", "stripes")
MORE_CLASSES = ("disc", "square", "stripes", "cross", "ring", "triangle", "dots")
FORMATS = (("jpg", "RGB"), ("png", "P"), ("png", "RGBA"), ("webp", "RGB"), ("bmp", "L"))
"""(extension, mode) the images cycle through."""


def draw(kind: str, rng: random.Random, size: int = 48) -> Image.Image:
    """One RGB image of a shape class."""
    noise = np.random.default_rng(rng.randrange(1 << 30)).integers(90, 160, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(noise, "RGB")
    pen = ImageDraw.Draw(image)
    span = rng.randint(size // 3, size // 2)
    x, y = rng.randint(0, size - span), rng.randint(0, size - span)
    box = (x, y, x + span, y + span)
    if kind == "disc":
        pen.ellipse(box, fill=(220, 30, 30))
    elif kind == "square":
        pen.rectangle(box, fill=(30, 30, 220))
    elif kind == "stripes":
        for row in range(0, size, 8):
            pen.rectangle((0, row, size, row + 3), fill=(30, 200, 30))
    elif kind == "cross":
        pen.rectangle((x + span // 3, y, x + 2 * span // 3, y + span), fill=(240, 240, 30))
        pen.rectangle((x, y + span // 3, x + span, y + 2 * span // 3), fill=(240, 240, 30))
    elif kind == "ring":
        pen.ellipse(box, outline=(250, 250, 250), width=4)
    elif kind == "triangle":
        pen.polygon([(x, y + span), (x + span, y + span), (x + span // 2, y)], fill=(200, 30, 200))
    else:
        for dx in range(0, span, 6):
            pen.ellipse((x + dx, y + dx, x + dx + 4, y + dx + 4), fill=(20, 20, 20))
    return image


def save(image: Image.Image, path: Path, mode: str) -> Path:
    """Save in ``mode`` (``P``: a palette image with a transparent colour, ``L``: grayscale)."""
    if mode == "P":
        converted = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
        converted.save(path, transparency=0)
    elif mode == "RGBA":
        rgba = image.convert("RGBA")
        rgba.putalpha(200)
        rgba.save(path)
    else:
        image.convert(mode).save(path)
    return path


def image_folder(root: Path, per_class: int = 30, classes: Sequence[str] = CLASSES, seed: int = 0,
                 size: int = 48) -> Path:
    """An ImageFolder: ``root/<class>/<i>.<ext>`` in every format and mode of ``FORMATS``."""
    rng = random.Random(seed)
    for kind in classes:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext, mode = FORMATS[i % len(FORMATS)]
            save(draw(kind, rng, size), root / kind / f"{i:03d}.{ext}", mode)
    return root


def split_folders(root: Path, counts: Dict[str, int], classes: Sequence[str] = CLASSES, seed: int = 0) -> Path:
    """``root/train|val|test/<class>/...``: the splits given as folders."""
    for offset, (split, per_class) in enumerate(counts.items()):
        image_folder(root / split, per_class, classes, seed + offset)
    return root


def image_table(root: Path, per_class: int = 20, fmt: str = "csv", seed: int = 0) -> Path:
    """A table of image paths relative to it (``images/<i>.png``) and labels."""
    import pandas as pd

    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows: List[Tuple[str, str]] = []
    for kind in CLASSES:
        for i in range(per_class):
            name = f"images/{kind}-{i}.png"
            draw(kind, rng).save(root / name)
            rows.append((name, kind))
    frame = pd.DataFrame(rows, columns=["image", "label"])
    path = root / f"labels.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    return path


def build_tiny_vit(folder: Path, size: int = 32) -> Path:
    """A tiny ViT (2 layers, 32 wide) with its image processor (squash to ``size``, mean/std 0.5)."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(image_size=size, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=2)
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
                      ).save_pretrained(folder)
    return folder


def build_tiny_resnet(folder: Path, size: int = 32) -> Path:
    """A tiny Hugging Face ResNet (2 stages) with ConvNeXt's processor (shorter side, centre crop 87.5%)."""
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=2)
    ResNetForImageClassification(config).save_pretrained(folder)
    ConvNextImageProcessor(size={"shortest_edge": size}, crop_pct=0.875).save_pretrained(folder)
    return folder


def build_tiny_timm(folder: Path) -> Path:
    """timm's ``test_resnet`` (373k parameters) saved as timm saves for the hub (config.json + safetensors)."""
    import timm
    from timm.models import save_for_hf

    save_for_hf(timm.create_model("test_resnet", pretrained=False), str(folder), safe_serialization=True)
    return folder
