"""The served model of a generative winner (causal LM or seq2seq): prompts in, generated text out.

Logged as an MLflow "model from code": MLflow keeps this file's source next to the weights and runs it on load, so
no pickled object is ever executed, and the weights load from safetensors. The file imports nothing from
finesweep, so the model loads wherever MLflow, torch and transformers are installed::

    model = mlflow.pyfunc.load_model("models:/summaries/latest")
    model.predict(pandas.DataFrame({"prompt": ["reverse: red cat sun"]}),
                  params={"max_new_tokens": 16, "temperature": 0.0})["generation"][0]
    # "sun cat red"

Input: a string column ``prompt``; a chat-tuned model also takes ``messages``, per row a list of ``{role,
content}`` objects (MLflow's ``Array(Object)``: pandas lists of dicts, or JSON arrays in a REST request), rendered
with the tokenizer's chat template and its generation prompt; a row without messages uses its ``prompt``, which a
chat model reads as one user turn. Output: a string column ``generation``, the new text
without special tokens. Inference parameters: ``max_new_tokens`` (default: ``data.max_target_length``),
``temperature`` (0 = greedy, the default; above 0 samples) and ``top_p`` (nucleus sampling, when sampling).
Prompts are tokenised as in fine-tuning, cut to ``max_length`` tokens (a causal model keeps their end, where it
continues); a causal model's batches are left-padded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd

META_FILE = "finesweep.json"
BATCH = 16
DEFAULTS = {"max_new_tokens": 64, "temperature": 0.0, "top_p": 1.0}


class GenerationModel(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined,misc]
    """Renders prompts (chats) as in fine-tuning and generates their continuations."""

    def load_context(self, context: Any) -> None:
        import transformers

        folder = Path(context.artifacts["model"])
        self.meta: Dict[str, Any] = json.loads((folder / META_FILE).read_text())
        self.causal = self.meta["auto_class"] == "AutoModelForCausalLM"
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left" if self.causal else "right"
        self.tokenizer.truncation_side = "left" if self.causal else "right"
        self.model = getattr(transformers, self.meta["auto_class"]).from_pretrained(folder).eval()

    # No type hints here on purpose: MLflow turns predict()'s hints into a schema of its own and warns;
    # the logged signature (GenerativeTask.signature) is the schema.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        settings = {**DEFAULTS, "max_new_tokens": self.meta.get("max_new_tokens", DEFAULTS["max_new_tokens"]),
                    **{k: v for k, v in (params or {}).items() if v is not None}}
        texts = self._texts(model_input)
        generations: List[str] = []
        for start in range(0, len(texts), BATCH):
            generations.extend(self._generate(texts[start:start + BATCH], settings))
        return pd.DataFrame({"generation": generations})

    def _texts(self, model_input: Any) -> List[str]:
        """Each row's text as the model reads it: a chat rendered by the template, or the prompt itself."""
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame({"prompt": list(model_input)})
        texts = []
        for _, row in frame.iterrows():
            turns = _turns(row.get("messages"))
            prompt = row.get("prompt")
            prompt = "" if prompt is None or (isinstance(prompt, float) and np.isnan(prompt)) else str(prompt)
            if self.meta.get("chat") and not turns:
                turns = [{"role": "user", "content": prompt}]
            texts.append(str(self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True))
                         if turns else prompt)
        return texts

    def _generate(self, texts: List[str], settings: Dict[str, Any]) -> List[str]:
        import torch

        encoded = self.tokenizer(texts, add_special_tokens=not self.meta.get("chat"), padding=True, truncation=True,
                                 max_length=int(self.meta["max_length"]), return_tensors="pt")
        sampling = float(settings["temperature"]) > 0
        extra = {"temperature": float(settings["temperature"]), "top_p": float(settings["top_p"])} if sampling else {}
        with torch.no_grad():
            output = self.model.generate(**encoded, max_new_tokens=int(settings["max_new_tokens"]), do_sample=sampling,
                                         num_beams=1, pad_token_id=self.tokenizer.pad_token_id,
                                         eos_token_id=self.tokenizer.eos_token_id, **extra)
        new = output[:, encoded["input_ids"].shape[1]:] if self.causal else output
        return [text.strip() for text in self.tokenizer.batch_decode(new, skip_special_tokens=True)]


def _turns(value: Any) -> Optional[List[Dict[str, str]]]:
    """A row's chat turns: a list (or array) of ``{role, content}`` or its JSON text; None when absent."""
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else None
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    turns = [{"role": str(t["role"]), "content": str(t["content"])} for t in list(value)]
    return turns or None


mlflow.models.set_model(GenerationModel())
