"""The forgetting probe on a tiny masked LM (BERT) and a tiny causal LM (GPT-2), both "pretrained" here on a toy
grammar: hand-computed perplexities, no change without training, a rise after destructive fine-tuning, and less
of one under L2-SP; its errors are one line."""

from __future__ import annotations

import copy
import math
import pickle
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
    BertTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

from conftest import FILLER, NEGATIVE, POSITIVE, SPECIAL, _sentence
from finesweep.config import ExperimentConfig
from finesweep.config.compose import compose
from finesweep.errors import ConfigError, DataError
from finesweep.finetune import forgetting
from finesweep.finetune.forgetting import ForgettingProbe
from finesweep.finetune.probe_text import MASK_SHARE
from finesweep.finetune.regularisers import L2SP
from finesweep.tasks import Task
from finesweep.tasks.text_classification import TextClassification

from .test_regularisers import lora_wrapped

DET, ADJ = ["the", "a"], ["small", "big", "old", "young", "red"]
NOUN = ["cat", "dog", "bird", "man", "woman", "child"]
VERB, PREP = ["sees", "likes", "follows", "finds"], ["near", "under", "behind"]
PLACE = ["house", "tree", "river", "garden"]
GRAMMAR_WORDS = sorted(set(DET + ADJ + NOUN + VERB + PREP + PLACE + ["."]))
DESTRUCTIVE_LR = 1e-1
DESTRUCTIVE_STEPS = 20
PRETRAIN_STEPS = 150
L2SP_STRENGTH = 1.0
"""L2-SP's coefficient in the comparison, fixed before measuring (see the report for other values)."""


def general_text(sentences: int, seed: int) -> str:
    """What the tiny models are "pretrained" on and probed with: a toy grammar, one sentence per line."""
    rng = random.Random(seed)
    lines = [" ".join([rng.choice(DET), rng.choice(ADJ), rng.choice(NOUN), rng.choice(VERB), rng.choice(DET),
                       rng.choice(NOUN), rng.choice(PREP), rng.choice(DET), rng.choice(PLACE), "."])
             for _ in range(sentences)]
    return "\n".join(lines) + "\n"


def unrelated_text(sentences: int, seed: int) -> List[str]:
    """The fine-tuning data: the sentiment sentences of the tests' CSV, nothing like the grammar."""
    rng = random.Random(seed)
    return [_sentence(rng, ["negative", "neutral", "positive"][i % 3]) for i in range(sentences)]


def build_masked_lm(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT trained for a few seconds as a masked LM on the grammar, saved WITH its head."""
    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + sorted(set(GRAMMAR_WORDS + POSITIVE + NEGATIVE + FILLER))
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(folder)
    model = BertForMaskedLM(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    stream = torch.tensor(tokenizer(general_text(512, seed=1), add_special_tokens=False)["input_ids"])
    windows = stream[: len(stream) // 30 * 30].view(-1, 30)  # packed as the probe packs: [CLS] 30 tokens [SEP]
    ids = torch.cat([torch.full((len(windows), 1), tokenizer.cls_token_id), windows,
                     torch.full((len(windows), 1), tokenizer.sep_token_id)], dim=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(PRETRAIN_STEPS):
        batch = ids[torch.randint(len(ids), (32,))]
        masked = (torch.rand(batch.shape) < MASK_SHARE) & (batch > 4)
        labels = batch.masked_fill(~masked, -100)
        model(input_ids=batch.masked_fill(masked, tokenizer.mask_token_id), labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(folder)
    return folder


def build_causal_lm(folder: Path) -> Path:
    """A 2-layer, 32-wide GPT-2 with a byte-level BPE of its own, trained for a few seconds on the grammar."""
    from tokenizers import ByteLevelBPETokenizer

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    text = general_text(512, seed=1)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([text], vocab_size=300, min_frequency=2, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                       bos_token_id=0, eos_token_id=0))
    ids = torch.tensor(tokenizer(text)["input_ids"])
    rows = ids[: len(ids) // 32 * 32].view(-1, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(PRETRAIN_STEPS):
        batch = rows[torch.randint(len(rows), (32,))]
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(folder)
    return folder


class NextToken(TextClassification):
    """A stand-in for the causal-LM task: only ``probe_nll`` (next-token NLL under the model's own head) matters."""

    def probe_nll(self, model: nn.Module, input_ids: torch.Tensor) -> Optional[Tuple[torch.Tensor, int]]:
        logits = model(input_ids=input_ids).logits[:, :-1]
        targets = input_ids[:, 1:]
        return functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                        reduction="sum"), targets.numel()


@contextmanager
def one_thread() -> Iterator[None]:
    """Train tiny models on one thread: with the cores busy (pytest-xdist, a colleague's tests), torch's
    intra-op threads wait on each other and a 2-layer model's step takes 10x longer."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def masked_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with one_thread():
        return build_masked_lm(tmp_path_factory.mktemp("models") / "tiny-bert-mlm")


@pytest.fixture(scope="module")
def causal_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with one_thread():
        return build_causal_lm(tmp_path_factory.mktemp("models") / "tiny-gpt2")


@pytest.fixture(scope="module")
def probe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("probe") / "general.txt"
    path.write_text(general_text(200, seed=7), encoding="utf-8")  # held-out sentences of the grammar
    return path


def config_for(model: Path, probe: Optional[Path], tiny_csv: Path, *overrides: str) -> ExperimentConfig:
    forgetting = f"probe.forgetting={probe}" if probe is not None else "probe.forgetting=null"
    return compose("demo", [f"model.name_or_path={model}", f"data.path={tiny_csv}", forgetting, "data.max_length=32",
                            "probe.max_tokens=512", *overrides]).config


# --- what the pretrained model scores ---------------------------------------------------------------------------

def test_the_masked_lm_base_perplexity_is_exp_of_the_hand_computed_nll(masked_lm: Path, probe_file: Path,
                                                                       tiny_csv: Path) -> None:
    probe = ForgettingProbe.prepare(config_for(masked_lm, probe_file, tiny_csv), TextClassification())
    assert probe is not None and probe.masked is not None
    tokenizer = BertTokenizer.from_pretrained(masked_lm)
    assert probe.blocks.shape == (16, 32), "512 tokens in blocks of data.max_length=32"
    assert (probe.blocks[:, 0] == tokenizer.cls_token_id).all()
    assert (probe.blocks[:, -1] == tokenizer.sep_token_id).all()
    assert not probe.masked[:, [0, -1]].any(), "special tokens are never masked"
    assert (probe.masked.sum(axis=1) == round(MASK_SHARE * 30)).all()
    model = BertForMaskedLM.from_pretrained(masked_lm).eval()
    total, count = 0.0, 0
    for block, masked in zip(probe.blocks, probe.masked, strict=True):  # one block and one token at a time
        ids = torch.tensor(block, dtype=torch.long)
        inputs = ids.masked_fill(torch.from_numpy(masked), tokenizer.mask_token_id)
        with torch.no_grad():
            log_probs = model(input_ids=inputs[None]).logits[0].log_softmax(-1)
        for position in np.flatnonzero(masked):
            total -= float(log_probs[position, ids[position]])
            count += 1
    assert probe.tokens == count
    assert probe.base_perplexity == pytest.approx(math.exp(total / count), rel=1e-5)
    assert probe.base_perplexity < len(tokenizer) / 2, "the grammar was learnt: far below a uniform guess"


def test_the_causal_lm_base_perplexity_is_exp_of_the_hand_computed_nll(causal_lm: Path, probe_file: Path,
                                                                       tiny_csv: Path) -> None:
    probe = ForgettingProbe.prepare(config_for(causal_lm, probe_file, tiny_csv), NextToken())
    assert probe is not None and probe.masked is None
    assert probe.blocks.shape == (16, 32)
    model = AutoModelForCausalLM.from_pretrained(causal_lm).eval()
    total, count = 0.0, 0
    for block in probe.blocks:
        ids = torch.tensor(block, dtype=torch.long)
        with torch.no_grad():
            log_probs = model(input_ids=ids[None]).logits[0].log_softmax(-1)
        for position in range(1, len(ids)):
            total -= float(log_probs[position - 1, ids[position]])
            count += 1
    assert count == 16 * 31 == probe.tokens
    assert probe.base_perplexity == pytest.approx(math.exp(total / count), rel=1e-5)
    assert probe.base_perplexity < 20


@pytest.mark.parametrize("model", ["masked_lm", "causal_lm"])
def test_scoring_a_few_blocks_at_a_time_gives_the_same_perplexity(model: str, probe_file: Path, tiny_csv: Path,
                                                                  request: pytest.FixtureRequest,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path: Path = request.getfixturevalue(model)
    task = NextToken() if model == "causal_lm" else TextClassification()
    whole = ForgettingProbe.prepare(config_for(path, probe_file, tiny_csv), task)
    monkeypatch.setattr(forgetting, "BATCH_TOKENS", 3 * 32)  # 3 blocks a batch: 6 batches, the last of 1 block
    batched = ForgettingProbe.prepare(config_for(path, probe_file, tiny_csv), task)
    assert whole is not None and batched is not None
    assert batched.base_perplexity == pytest.approx(whole.base_perplexity, rel=1e-5)


def test_the_probe_keeps_probe_max_tokens(masked_lm: Path, probe_file: Path, tiny_csv: Path) -> None:
    probe = ForgettingProbe.prepare(config_for(masked_lm, probe_file, tiny_csv, "probe.max_tokens=100"),
                                    TextClassification())
    assert probe is not None and probe.blocks.shape == (3, 32) and probe.blocks.dtype == np.int32


def test_no_probe_file_means_no_probe(masked_lm: Path, tiny_csv: Path) -> None:
    assert ForgettingProbe.prepare(config_for(masked_lm, None, tiny_csv), TextClassification()) is None


# --- what a trial measures --------------------------------------------------------------------------------------

def test_an_unchanged_model_has_not_forgotten_and_keeps_its_modes(masked_lm: Path, probe_file: Path,
                                                                  tiny_csv: Path) -> None:
    probe = ForgettingProbe.prepare(config_for(masked_lm, probe_file, tiny_csv), TextClassification())
    assert probe is not None
    classifier = AutoModelForSequenceClassification.from_pretrained(masked_lm, num_labels=3).train()
    classifier.bert.embeddings.eval()  # a sub-module kept in eval must stay so
    metrics = probe.measure(TextClassification(), classifier)
    assert metrics["probe/perplexity"] == pytest.approx(probe.base_perplexity, rel=1e-6)
    assert metrics["probe/perplexity_increase"] == pytest.approx(0.0, abs=1e-6 * probe.base_perplexity)
    assert classifier.training and classifier.bert.encoder.training and not classifier.bert.embeddings.training


def test_a_probe_measures_inside_and_outside_inference_mode(masked_lm: Path, probe_file: Path,
                                                            tiny_csv: Path) -> None:
    probe = ForgettingProbe.prepare(config_for(masked_lm, probe_file, tiny_csv), TextClassification())
    assert probe is not None
    classifier = AutoModelForSequenceClassification.from_pretrained(masked_lm, num_labels=3)
    with torch.inference_mode():  # as in Lightning's validation hooks: the cached masked LM is built here
        inside = probe.measure(TextClassification(), classifier)["probe/perplexity"]
    torch.manual_seed(8)
    with torch.no_grad():
        for param in classifier.bert.encoder.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    outside = probe.measure(TextClassification(), classifier)["probe/perplexity"]  # copies into the cached one
    assert inside == pytest.approx(probe.base_perplexity, rel=1e-6) and outside != pytest.approx(inside, rel=1e-3)


def test_an_unchanged_causal_lm_has_not_forgotten(causal_lm: Path, probe_file: Path, tiny_csv: Path) -> None:
    probe = ForgettingProbe.prepare(config_for(causal_lm, probe_file, tiny_csv), NextToken())
    assert probe is not None
    model = AutoModelForCausalLM.from_pretrained(causal_lm).train()
    assert probe.measure(NextToken(), model)["probe/perplexity_increase"] == pytest.approx(0.0, abs=1e-9)
    assert model.training


def test_a_lora_encoder_is_read_through_its_adapters(masked_lm: Path, probe_file: Path, tiny_csv: Path) -> None:
    probe = ForgettingProbe.prepare(config_for(masked_lm, probe_file, tiny_csv), TextClassification())
    assert probe is not None
    wrapped = lora_wrapped(AutoModelForSequenceClassification.from_pretrained(masked_lm, num_labels=3))
    assert probe.measure(TextClassification(), wrapped)["probe/perplexity_increase"] == pytest.approx(0.0, abs=1e-4)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn_like(param))
    moved = probe.measure(TextClassification(), wrapped)["probe/perplexity"]
    merged_model = copy.deepcopy(wrapped).merge_and_unload()  # peft's own merge
    merged = probe.measure(TextClassification(), merged_model)["probe/perplexity"]
    assert moved != pytest.approx(probe.base_perplexity, rel=1e-3)
    assert moved == pytest.approx(merged, rel=1e-5)


def test_pickling_drops_the_cached_masked_lm(masked_lm: Path, probe_file: Path, tiny_csv: Path) -> None:
    probe = ForgettingProbe.prepare(config_for(masked_lm, probe_file, tiny_csv), TextClassification())
    assert probe is not None
    probe.measure(TextClassification(), AutoModelForSequenceClassification.from_pretrained(masked_lm, num_labels=3))
    assert probe._masked_lm is not None, "cached after the first measure"
    payload = pickle.dumps(probe)
    assert len(payload) < 16_000, "token ids and numbers only"
    shipped = pickle.loads(payload)
    assert shipped._masked_lm is None and probe._masked_lm is not None
    assert np.array_equal(shipped.blocks, probe.blocks) and shipped.base_perplexity == probe.base_perplexity


# --- destructive fine-tuning, with and without L2-SP --------------------------------------------------------------

def _fine_tune_classifier(model: nn.Module, tokenizer_path: Path, l2sp: Optional[L2SP]) -> None:
    tokenizer = BertTokenizer.from_pretrained(tokenizer_path)
    texts = unrelated_text(64, seed=5)
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    labels = torch.tensor([i % 3 for i in range(len(texts))])
    _train(model, l2sp, lambda rows: functional.cross_entropy(
        model(input_ids=encoded["input_ids"][rows], attention_mask=encoded["attention_mask"][rows]).logits,
        labels[rows]))


def _fine_tune_causal_lm(model: nn.Module, tokenizer_path: Path, l2sp: Optional[L2SP]) -> None:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_path)
    ids = torch.tensor(tokenizer(" ".join(unrelated_text(64, seed=5)))["input_ids"])
    rows_of = ids[: len(ids) // 32 * 32].view(-1, 32)
    _train(model, l2sp, lambda rows: model(input_ids=rows_of[rows % len(rows_of)],
                                           labels=rows_of[rows % len(rows_of)]).loss)


def _train(model: nn.Module, l2sp: Optional[L2SP], loss_of: object) -> None:
    torch.manual_seed(4)  # the same batches with and without L2-SP
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=DESTRUCTIVE_LR, weight_decay=0.0)
    for _ in range(DESTRUCTIVE_STEPS):
        rows = torch.randint(64, (16,))
        loss = loss_of(rows)  # type: ignore[operator]
        if l2sp is not None:
            loss = loss + l2sp.penalty(model)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def _increases(probe: ForgettingProbe, task: Task, build: object, fine_tune: object, path: Path
               ) -> Dict[str, float]:
    found = {}
    for name, strength in (("plain", None), ("l2sp", L2SP_STRENGTH)):
        torch.manual_seed(6)  # the same new head in both runs
        model = build()  # type: ignore[operator]
        l2sp = L2SP(model, task.layer_map(model), strength) if strength is not None else None
        with one_thread():
            fine_tune(model, path, l2sp)  # type: ignore[operator]
        found[name] = probe.measure(task, model)["probe/perplexity_increase"]
    return found


@pytest.mark.timeout(120)
def test_destructive_fine_tuning_of_an_encoder_shows_and_l2sp_forgets_less(masked_lm: Path, probe_file: Path,
                                                                          tiny_csv: Path) -> None:
    task = TextClassification()
    probe = ForgettingProbe.prepare(config_for(masked_lm, probe_file, tiny_csv), task)
    assert probe is not None
    found = _increases(probe, task, lambda: AutoModelForSequenceClassification.from_pretrained(masked_lm, num_labels=3),
                       _fine_tune_classifier, masked_lm)
    assert found["plain"] > 0.5 * probe.base_perplexity, f"the probe rises: {found}, base {probe.base_perplexity}"
    assert found["l2sp"] < found["plain"], f"L2-SP forgets less at the same lr: {found}"


@pytest.mark.timeout(120)
def test_destructive_fine_tuning_of_a_causal_lm_shows_and_l2sp_forgets_less(causal_lm: Path, probe_file: Path,
                                                                           tiny_csv: Path) -> None:
    task = NextToken()
    probe = ForgettingProbe.prepare(config_for(causal_lm, probe_file, tiny_csv), task)
    assert probe is not None
    found = _increases(probe, task, lambda: AutoModelForCausalLM.from_pretrained(causal_lm), _fine_tune_causal_lm,
                       causal_lm)
    assert found["plain"] > 0.5 * probe.base_perplexity, f"the probe rises: {found}, base {probe.base_perplexity}"
    assert found["l2sp"] < found["plain"], f"L2-SP forgets less at the same lr: {found}"


# --- errors -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("content", "match"), [
    (None, r"^probe\.forgetting must be an existing plain-text file, got .*missing\.txt \(no such file\)\. Fix"),
    (b"", r"^probe\.forgetting must hold text, got .*probe\.txt, which is empty\. Use a file"),
    (b"  \n\t\n", r"^probe\.forgetting must hold text, got .*, which is empty"),
    (b"caf\xe9 au lait " * 10, r"^probe\.forgetting must be UTF-8 plain text, got .*probe\.txt \(byte 0xe9 is not "
                               r"UTF-8\)\. Save it as UTF-8"),
    (b"PK\x03\x04\x14\x00\x00\x00mimetype", r"^probe\.forgetting must be plain text, got .*, which holds NUL bytes"),
    (b"the cat sees a dog .", r"^probe\.forgetting needs at least 16 tokens of text, got 6 in .*probe\.txt\. Use a "
                              r"longer file"),
], ids=["missing", "empty", "blank", "latin-1", "binary", "too-short"])
def test_a_bad_probe_file_is_one_line(content: Optional[bytes], match: str, masked_lm: Path, tiny_csv: Path,
                                      tmp_path: Path) -> None:
    path = tmp_path / ("missing.txt" if content is None else "probe.txt")
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=match) as caught:
        ForgettingProbe.prepare(config_for(masked_lm, path, tiny_csv), TextClassification())
    assert "\n" not in str(caught.value)


def test_an_encoder_checkpoint_without_a_masked_lm_head_is_refused(tiny_model: Path, probe_file: Path,
                                                                   tiny_csv: Path) -> None:
    # conftest's tiny BERT is saved as a sequence classifier: like a sentence-transformers MiniLM, no MLM head
    with pytest.raises(ConfigError, match=r"^probe\.forgetting needs a model with a language-model head, got "
                                          r".*tiny-bert whose checkpoint has none \(6 masked-LM head weights "
                                          r"missing, e\.g\. cls\.predictions\.bias\)\. Remove probe\.forgetting, or"
                       ) as caught:
        ForgettingProbe.prepare(config_for(tiny_model, probe_file, tiny_csv), TextClassification())
    assert "\n" not in str(caught.value)


def test_a_causal_lm_under_a_task_that_does_not_score_text_is_refused(causal_lm: Path, probe_file: Path,
                                                                      tiny_csv: Path) -> None:
    with pytest.raises(ConfigError, match=r"^probe\.forgetting needs a model with a language-model head, got "
                                          r".*tiny-gpt2, whose architecture has no masked-LM head") as caught:
        ForgettingProbe.prepare(config_for(causal_lm, probe_file, tiny_csv), TextClassification())
    assert "\n" not in str(caught.value)


def test_an_image_model_is_refused(probe_file: Path, tiny_csv: Path, tmp_path: Path) -> None:
    from vision import build_tiny_vit

    vit = build_tiny_vit(tmp_path / "tiny-vit")
    with pytest.raises(ConfigError, match=r"^probe\.forgetting needs a text model with a tokenizer, got "
                                          r"model\.name_or_path=.*tiny-vit, which has none \(.*\)\. Remove "
                                          r"probe\.forgetting: an image model has no language to forget\.$"):
        ForgettingProbe.prepare(config_for(vit, probe_file, tiny_csv), TextClassification())


def test_an_encoder_probe_refuses_4bit_weights(masked_lm: Path, probe_file: Path, tiny_csv: Path) -> None:
    config = config_for(masked_lm, probe_file, tiny_csv)
    config.model.load_in_4bit = True  # the schema allows it only on a GPU with LoRA: set past the checks
    with pytest.raises(ConfigError, match=r"^probe\.forgetting scores an encoder .* got model\.load_in_4bit=true\."):
        ForgettingProbe.prepare(config, TextClassification())


def test_the_probe_is_deterministic(masked_lm: Path, probe_file: Path, tiny_csv: Path) -> None:
    first = ForgettingProbe.prepare(config_for(masked_lm, probe_file, tiny_csv), TextClassification())
    second = ForgettingProbe.prepare(config_for(masked_lm, probe_file, tiny_csv), TextClassification())
    assert first is not None and second is not None and first.masked is not None and second.masked is not None
    assert np.array_equal(first.masked, second.masked) and first.base_perplexity == second.base_perplexity
    assert copy.copy(first).tokens == first.tokens
