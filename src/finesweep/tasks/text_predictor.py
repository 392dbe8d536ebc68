"""The served model of a text task's winner: raw text in, predicted labels (or values) and scores out.

Logged as an MLflow "model from code": MLflow keeps this file's source next to the weights and
runs it on load, so no pickled object is ever executed, and the weights load from safetensors.
The file imports nothing from finesweep, so the model loads wherever MLflow, torch and
transformers are installed::

    model = mlflow.pyfunc.load_model("models:/demo/latest")
    model.predict(pandas.DataFrame({"text": ["what a great day", "my flight got cancelled"]}))

``ServingMeta`` is what the model needs to know besides its weights: ``TextClassification.serving_meta``
writes it beside them as ``finesweep.json``, and its signature says the same inputs and outputs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd

META_FILE = "finesweep.json"
BATCH = 64


@dataclass(frozen=True)
class ServingMeta:
    """How the served model reads its input and names its output."""

    task: str
    """classification or regression."""
    label_names: Tuple[str, ...]
    """Class names in label-id order; empty for regression."""
    text_column: str
    text_pair_column: Optional[str]
    max_length: int
    """Tokens per example after truncation, as in fine-tuning."""
    objective: str
    """The metric the sweep optimised (for the record)."""

    def to_json(self) -> str:
        """The metadata as the JSON text of ``finesweep.json``."""
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ServingMeta:
        """Read ``finesweep.json`` back."""
        values: Dict[str, Any] = json.loads(text)
        return cls(**{**values, "label_names": tuple(values["label_names"])})


class TextModel(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined,misc]
    """Tokenises raw text exactly as during fine-tuning and runs the classifier or regressor."""

    def load_context(self, context: Any) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = Path(context.artifacts["model"])
        self.meta = ServingMeta.from_json((folder / META_FILE).read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).eval()

    # No type hints here on purpose: MLflow turns predict()'s hints into a schema of its own and warns;
    # the logged signature (TextClassification.signature) is the schema.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        import torch

        frame = self._frame(model_input)
        outputs = [self._logits(frame.iloc[i:i + BATCH]) for i in range(0, len(frame), BATCH)]
        logits = np.concatenate(outputs) if outputs else np.zeros((0, max(1, len(self.meta.label_names))))
        if self.meta.task == "regression":
            return pd.DataFrame({"prediction": logits[:, 0]})
        probs = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
        names = self.meta.label_names
        return pd.DataFrame({"label": [names[i] for i in probs.argmax(axis=1)], "score": probs.max(axis=1)})

    def _frame(self, model_input: Any) -> pd.DataFrame:
        text, pair = self.meta.text_column, self.meta.text_pair_column
        if isinstance(model_input, pd.DataFrame):
            if text not in model_input.columns and len(model_input.columns) >= 1:
                model_input = model_input.rename(columns={model_input.columns[0]: text})
            return model_input
        rows: List[Any] = list(model_input)
        return pd.DataFrame({text: rows}) if not pair else pd.DataFrame(rows, columns=[text, pair])

    def _logits(self, frame: pd.DataFrame) -> np.ndarray:
        import torch

        pair = self.meta.text_pair_column
        encoded = self.tokenizer(frame[self.meta.text_column].astype(str).tolist(),
                                 frame[pair].astype(str).tolist() if pair else None,
                                 truncation=True, max_length=self.meta.max_length, padding=True,
                                 return_tensors="pt")
        with torch.no_grad():
            return np.asarray(self.model(**encoded).logits.float().numpy())


mlflow.models.set_model(TextModel())
