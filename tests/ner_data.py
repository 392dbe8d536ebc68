"""Tagged sentences a tiny model can learn, written as CoNLL, JSONL or Parquet, and a tiny BERT that reads them.

People follow "mr" or start a sentence, places follow "in"/"to", organisations follow "the"/"for": the context
and the names themselves tell the entity types. Several names are one to three words (B-/I- runs), and the
tokenizer's vocabulary splits some words into two or three WordPiece sub-tokens (``johnson`` -> ``john ##son``,
``oduya`` -> ``od ##u ##ya``), so aligning labels to first sub-tokens is exercised. Deterministic by seed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import List, Sequence, Tuple

TaggedSentence = Tuple[List[str], List[str]]

FIRST = ["anna", "boris", "carla", "dmitri", "elena"]
LAST = ["smith", "johnson", "kowalski", "oduya", "berg"]
PLACES = [["paris"], ["berlin"], ["new", "york"], ["stockholm"], ["rio", "de", "janeiro"]]
ORGS = [["acme", "corp"], ["united", "nations"], ["red", "cross"], ["globex"], ["initech"]]
TEMPLATES = [
    "mr PER lives in LOC .",
    "PER works for ORG in LOC .",
    "the ORG hired mr PER yesterday .",
    "we flew to LOC on monday .",
    "ORG opened an office in LOC , said PER .",
    "it was a quiet day .",
]
SPLIT_WORDS = {"johnson": ["john", "##son"], "kowalski": ["kowal", "##ski"], "oduya": ["od", "##u", "##ya"],
               "stockholm": ["stock", "##holm"], "globex": ["glob", "##ex"], "initech": ["init", "##ech"],
               "janeiro": ["jan", "##eiro"], "yesterday": ["yester", "##day"]}
"""Words the vocabulary holds only as sub-tokens."""
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _entity(rng: random.Random, kind: str) -> List[str]:
    if kind == "PER":
        return [rng.choice(FIRST)] + ([rng.choice(LAST)] if rng.random() < 0.7 else [])
    return list(rng.choice(PLACES if kind == "LOC" else ORGS))


def make_sentences(n: int, seed: int = 0) -> List[TaggedSentence]:
    """``n`` IOB2-tagged sentences (words, tags) from the templates."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        words: List[str] = []
        tags: List[str] = []
        for slot in rng.choice(TEMPLATES).split():
            if slot in ("PER", "LOC", "ORG"):
                name = _entity(rng, slot)
                words.extend(name)
                tags.extend([f"B-{slot}"] + [f"I-{slot}"] * (len(name) - 1))
            else:
                words.append(slot)
                tags.append("O")
        sentences.append((words, tags))
    return sentences


def write_conll(path: Path, sentences: Sequence[TaggedSentence], docstart: bool = True, columns: int = 3) -> Path:
    """A CoNLL file: ``-DOCSTART-`` first (optionally), then one word per line (``word [NN ...] tag``), two blank
    lines between the first sentences and one after the others."""
    lines = ["-DOCSTART- -X- O", ""] if docstart else []
    for index, (words, tags) in enumerate(sentences):
        lines.extend(" ".join([word, *["NN"] * (columns - 2), tag]) for word, tag in zip(words, tags, strict=True))
        lines.extend(["", ""] if index < 2 else [""])
    path.write_text("\n".join(lines) + "\n")
    return path


def write_jsonl(path: Path, sentences: Sequence[TaggedSentence], tokens: str = "tokens", tags: str = "tags") -> Path:
    """A JSONL table: one row per sentence, a list of words and a list of tags."""
    path.write_text("".join(json.dumps({tokens: w, tags: t}) + "\n" for w, t in sentences))
    return path


def write_parquet(path: Path, sentences: Sequence[TaggedSentence], tokens: str = "tokens",
                  tags: str = "tags") -> Path:
    """A Parquet table: one row per sentence, list columns of words and tags."""
    import pandas as pd

    pd.DataFrame({tokens: [w for w, _ in sentences], tags: [t for _, t in sentences]}).to_parquet(path)
    return path


def vocabulary() -> List[str]:
    """Every word of the templates and names; the words of ``SPLIT_WORDS`` only as their sub-tokens (``##u`` also
    spells made-up words of many sub-tokens: ``oduuuu`` -> ``od ##u ##u ##u ##u``)."""
    words = {w for t in TEMPLATES for w in t.split() if w not in ("PER", "LOC", "ORG")}
    words |= set(FIRST) | set(LAST) | {w for name in PLACES + ORGS for w in name}
    pieces = {piece for word in words & set(SPLIT_WORDS) for piece in SPLIT_WORDS[word]}
    return SPECIAL + sorted((words - set(SPLIT_WORDS)) | pieces)


def build_tiny_ner_bert(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT whose WordPiece vocabulary covers the sentences above, saved with save_pretrained."""
    import torch
    from transformers import BertConfig, BertForTokenClassification, BertTokenizer

    torch.manual_seed(0)  # the same "pretrained" weights in every test session
    folder.mkdir(parents=True, exist_ok=True)
    vocab = vocabulary()
    BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}, do_lower_case=True).save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertForTokenClassification(config).save_pretrained(folder)
    return folder


def build_byte_level_tokenizer(folder: Path) -> Path:
    """A RoBERTa-style byte-level BPE tokenizer trained on the sentences above (saved without a prefix space, as
    RoBERTa's own is), for what pre-split words need of such tokenizers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import RobertaTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([" ".join(words) for words, _ in make_sentences(200)], trainer)
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    RobertaTokenizerFast(tokenizer_object=backend).save_pretrained(folder)
    return folder
