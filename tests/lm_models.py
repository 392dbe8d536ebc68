"""Tiny generative models and data for the causal LM and seq2seq tests: GPT-2, Llama and T5 built from configs in
milliseconds, each with a real byte-level BPE tokenizer, and tables of text, prompt/response, chat turns and
source/target pairs that such models can learn in a few epochs.

The tokenizer is trained here (``tokenizers``) on real English: the docstrings of Python's standard library
modules (``STDLIB_MODULES``), always installed with Python, plus the words of the data below. Deterministic:
the same text, the same merges, and ``torch.manual_seed`` before every model.
"""

from __future__ import annotations

import importlib
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, NamedTuple, Sequence, Tuple

if TYPE_CHECKING:
    from finesweep.config import ExperimentConfig
    from finesweep.tasks import PreparedData, Task

STDLIB_MODULES = ("textwrap", "json", "collections", "argparse", "pathlib", "functools", "itertools", "string",
                  "random", "statistics", "difflib", "heapq", "bisect", "csv", "logging", "unittest", "shutil")
"""Standard-library modules whose docstrings (module, classes, functions) are the tokenizer's training text."""

WORDS = ["red", "green", "blue", "cat", "dog", "bird", "sun", "moon", "tree", "river", "stone", "cloud"]
"""What prompts and sources are made of: short, common, single BPE tokens after training."""

LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}"
    "{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
"""A Jinja chat template in the style of Zephyr/TinyLlama: each turn is ``<|role|>\\n{content}</s>``."""


def english_text() -> str:
    """The docstrings of ``STDLIB_MODULES`` (real English prose about software), in a fixed order."""
    texts: List[str] = []
    for name in STDLIB_MODULES:
        module = importlib.import_module(name)
        texts.append(module.__doc__ or "")
        for attribute in sorted(vars(module)):
            doc = getattr(getattr(module, attribute), "__doc__", None)
            if isinstance(doc, str) and not attribute.startswith("_"):
                texts.append(doc)
    return "\n".join(texts)


def english_sentences(count: int, seed: int = 0, words: Tuple[int, int] = (6, 24)) -> List[str]:
    """``count`` pieces of the standard library's docstrings of ``words`` words each, picked with a seed."""
    tokens = english_text().split()
    rng = random.Random(seed)
    found = []
    for _ in range(count):
        size = rng.randint(*words)
        start = rng.randrange(len(tokens) - size)
        found.append(" ".join(tokens[start:start + size]))
    return found


def build_tokenizer(folder: Path, kind: str, vocab_size: int = 1000) -> Path:
    """A byte-level BPE trained on ``english_text``, saved as a ``PreTrainedTokenizerFast`` in ``folder``.

    ``kind`` sets the special tokens as the real models have them: ``gpt2`` (``<|endoftext|>`` is bos and eos, no
    pad token, nothing added), ``llama`` (``<s>`` added before every text, ``</s>`` eos, ``<pad>``, a chat
    template), ``t5`` (``</s>`` appended after every text, ``<pad>`` is also the decoder's start).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = {"gpt2": ["<|endoftext|>"], "llama": ["<pad>", "<s>", "</s>", "<unk>"],
               "t5": ["<pad>", "</s>", "<unk>"]}[kind]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = english_text().split("\n") + [" ".join(WORDS)] * 50 + ["reverse: " + w for w in WORDS] * 20
    backend.train_from_iterator(corpus, trainer)
    names: Dict[str, str] = {}
    if kind == "gpt2":
        names = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    elif kind == "llama":
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                               special_tokens=[("<s>", backend.token_to_id("<s>"))])
        names = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    else:
        backend.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                               special_tokens=[("</s>", backend.token_to_id("</s>"))])
        names = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **names)
    if kind == "llama":
        tokenizer.chat_template = LLAMA_CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_gpt2(folder: Path) -> Path:
    """A 2-layer, 32-wide GPT-2 (tied input and output embeddings, as GPT-2's are) with its tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(build_tokenizer(folder, "gpt2"))
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def build_tiny_llama(folder: Path) -> Path:
    """A 2-layer, 32-wide Llama (untied output projection, grouped-query attention) with a chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(build_tokenizer(folder, "llama"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def build_tiny_t5(folder: Path) -> Path:
    """A 2+2-layer, 32-wide T5 (tied embeddings) whose decoder starts from ``<pad>``, as T5's does."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(build_tokenizer(folder, "t5"))
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                      num_heads=4, relative_attention_num_buckets=8, dropout_rate=0.0,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    return folder


# --- data ----------------------------------------------------------------------------------------------------------


def reverse_pairs(count: int, seed: int = 0) -> List[Tuple[str, str]]:
    """``("reverse: red cat sun", "sun cat red")``: a mapping a tiny model learns from a few hundred pairs."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        words = rng.sample(WORDS, rng.randint(2, 4))
        pairs.append(("reverse: " + " ".join(words), " ".join(reversed(words))))
    return pairs


def write_text_csv(path: Path, rows: int = 120, seed: int = 0) -> Path:
    """A ``text`` column of English sentences (domain adaptation)."""
    import pandas as pd

    pd.DataFrame({"text": english_sentences(rows, seed)}).to_csv(path, index=False)
    return path


def write_prompt_csv(path: Path, rows: int = 200, seed: int = 0, prompt: str = "prompt",
                     response: str = "response") -> Path:
    """``prompt``/``response`` columns of ``reverse_pairs`` (supervised fine-tuning)."""
    import pandas as pd

    pairs = reverse_pairs(rows, seed)
    pd.DataFrame({prompt: [p for p, _ in pairs], response: [r for _, r in pairs]}).to_csv(path, index=False)
    return path


def conversations(count: int, seed: int = 0) -> List[List[Dict[str, str]]]:
    """Chats of a system turn, then one or two user/assistant exchanges, each assistant turn reversing the user's."""
    rng = random.Random(seed)
    chats = []
    for _ in range(count):
        turns = [{"role": "system", "content": "You reverse words."}]
        for prompt, answer in reverse_pairs(rng.randint(1, 2), rng.randrange(10 ** 6)):
            turns += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        chats.append(turns)
    return chats


def write_messages_jsonl(path: Path, chats: Sequence[List[Dict[str, str]]], column: str = "messages") -> Path:
    """A JSONL table with one chat (a list of {role, content}) per row."""
    path.write_text("".join(json.dumps({column: chat}) + "\n" for chat in chats))
    return path


def write_source_target_csv(path: Path, rows: int = 200, seed: int = 0) -> Path:
    """``source``/``target`` columns of ``reverse_pairs`` (seq2seq)."""
    import pandas as pd

    pairs = reverse_pairs(rows, seed)
    pd.DataFrame({"source": [p for p, _ in pairs], "target": [r for _, r in pairs]}).to_csv(path, index=False)
    return path


def lm_config(model: Path, path: Path, task: str = "causal_lm", storage: Path = Path("/tmp"), **values: Any
              ) -> ExperimentConfig:
    """An experiment config for one generative fit of ``model`` on ``path``: objective val/loss, 32-bit, one trial;
    ``values`` are dotted keys to override (``**{"finetune.strategy": "lora"}``)."""
    from finesweep.config import (
        ClusterConfig,
        DataConfig,
        ExperimentConfig,
        ModelConfig,
        ObjectiveConfig,
        SearchConfig,
        TrackingConfig,
        TrainerConfig,
    )
    from finesweep.config.choices import Mode, Precision
    from finesweep.config.overrides import with_overrides

    base = ExperimentConfig(
        model=ModelConfig(name_or_path=str(model)), data=DataConfig(path=str(path), task=task),
        trainer=TrainerConfig(precision=Precision["32-true"]), objective=ObjectiveConfig("val/loss", Mode.min),
        search=SearchConfig(num_trials=1), tracking=TrackingConfig(uri=f"sqlite:///{storage / 'mlflow.db'}"),
        cluster=ClusterConfig(storage_path=str(storage / "runs"), log_dir=str(storage / "logs")))
    return with_overrides(base, dict(values))


class Served(NamedTuple):
    """A generative task's model as the registry logs it, loaded back with ``mlflow.pyfunc``."""

    model: Any
    meta: Dict[str, Any]
    config: ExperimentConfig
    data: PreparedData
    package: Path
    """What was logged: the weights, the tokenizer, finesweep.json."""


def serve(task: Task, model_path: Path, path: Path, folder: Path, max_new_tokens: int = 5) -> Served:
    """The pretrained model packaged (``save_trained`` + ``package``) and logged "from code" as the registry does,
    into an MLflow store and artifact folder under ``folder``."""
    import mlflow

    config = lm_config(model_path, path, task.name, **{"data.max_target_length": max_new_tokens})
    data = task.prepare(config)
    package = folder / "package"
    task.save_trained(task.build_model(config, data), package)
    meta = task.serving_meta(config, data)
    task.package(package, str(model_path), meta)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    try:
        experiment = mlflow.create_experiment("served", artifact_location=str(folder / "artifacts"))
        with mlflow.start_run(experiment_id=experiment):
            info = mlflow.pyfunc.log_model(name="model", python_model=str(task.predictor_source()),
                                           artifacts={"model": str(package)}, signature=task.signature(meta),
                                           pip_requirements=list(task.pip_requirements))
        return Served(mlflow.pyfunc.load_model(info.model_uri), meta, config, data, package)
    finally:
        mlflow.set_tracking_uri(previous)
