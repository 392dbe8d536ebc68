"""The served model of an image classification winner: an image in, its label, score and top-k classes out.

Logged as an MLflow "model from code" (no pickled object runs on load; the weights are safetensors). It imports
nothing from finesweep, so it loads wherever MLflow, torch, Pillow and transformers (or timm) are installed::

    model = mlflow.pyfunc.load_model("models:/vision/latest")
    model.predict(pandas.DataFrame({"image": ["/data/cat.jpg"]}), params={"top_k": 3})

Each input row gives ``image`` (a file path, or the file's bytes in base64, bare or as a ``data:`` URI) or
``image_bytes`` (the file's bytes; JSON carries them in base64, as MLflow does for binary columns). Images are
decoded and resized exactly as for fine-tuning (finesweep's ``images.Resize``), then normalised with the model's
mean and std.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from pathlib import Path
from typing import Any, Dict, List

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd

META_FILE = "finesweep.json"
BATCH = 32


class ImageModel(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined,misc]
    """Decodes, resizes and normalises images as in fine-tuning, and answers the top classes."""

    def load_context(self, context: Any) -> None:
        folder = Path(context.artifacts["model"])
        self.meta: Dict[str, Any] = json.loads((folder / META_FILE).read_text())
        if self.meta["library"] == "timm":
            import timm

            self.model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        else:
            from transformers import AutoModelForImageClassification

            self.model = AutoModelForImageClassification.from_pretrained(folder).eval()

    # No type hints on purpose: MLflow would turn them into a schema of its own; the logged signature is the schema.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        import torch

        top_k = max(1, min(int((params or {}).get("top_k", 1)), len(self.meta["label_names"])))
        images = [_image_bytes(row) for row in _rows(model_input)]
        scores = [self._probabilities(images[i:i + BATCH]) for i in range(0, len(images), BATCH)]
        probs = np.concatenate(scores) if scores else np.zeros((0, len(self.meta["label_names"])))
        best = torch.from_numpy(probs).topk(top_k, dim=-1)
        names = self.meta["label_names"]
        top_labels = [[names[i] for i in row] for row in best.indices.tolist()]
        top_scores = best.values.tolist()
        return pd.DataFrame({"label": [row[0] for row in top_labels], "score": [row[0] for row in top_scores],
                             "top_labels": top_labels, "top_scores": top_scores})

    def _probabilities(self, files: List[bytes]) -> np.ndarray:
        import torch

        pixels = torch.from_numpy(np.stack([_prepare(data, self.meta) for data in files])).float().div_(255.0)
        mean = torch.tensor(self.meta["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(self.meta["std"]).view(1, 3, 1, 1)
        with torch.no_grad():
            output = self.model(pixel_values=(pixels - mean) / std) if self.meta["library"] != "timm" else (
                self.model((pixels - mean) / std))
            logits = output.logits if hasattr(output, "logits") else output
        return np.asarray(torch.softmax(logits.float(), dim=-1).numpy())


def _rows(model_input: Any) -> List[Dict[str, Any]]:
    if isinstance(model_input, pd.DataFrame):
        return [dict(row) for _, row in model_input.iterrows()]
    return [item if isinstance(item, dict) else {"image": item} for item in list(model_input)]


def _image_bytes(row: Dict[str, Any]) -> bytes:
    raw = row.get("image_bytes")
    if isinstance(raw, (bytes, bytearray)) and raw:
        return bytes(raw)
    value = row.get("image")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str) or not value:
        raise ValueError("each row needs 'image' (a file path or base64 text) or 'image_bytes' (the file's bytes)")
    if value.startswith("data:"):
        return base64.b64decode(value.split(",", 1)[1])
    if _is_file(value):
        return Path(value).read_bytes()
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"'image' is neither an existing file nor base64 text: {value[:80]!r}") from None


def _is_file(value: str) -> bool:
    try:
        return Path(value).is_file()
    except OSError:  # e.g. base64 text longer than a file name may be
        return False


def _prepare(data: bytes, meta: Dict[str, Any]) -> np.ndarray:
    """The image as a (3, size, size) uint8 array, exactly as finesweep prepared the training images."""
    from PIL import Image

    size, crop_pct = int(meta["size"]), meta["crop_pct"]
    with Image.open(io.BytesIO(data)) as opened:
        if opened.format == "JPEG":
            opened.draft("RGB", (size * 2, size * 2))
        image: Image.Image = opened
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        image = image.convert("RGB") if image.mode != "RGB" else image
        if crop_pct is None:
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        else:
            scale = size / crop_pct / min(image.size)
            width, height = (max(size, round(side * scale)) for side in image.size)
            image = image.resize((width, height), Image.Resampling.BICUBIC)
            left, top = (width - size) // 2, (height - size) // 2
            image = image.crop((left, top, left + size, top + size))
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


mlflow.models.set_model(ImageModel())
