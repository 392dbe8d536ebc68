"""Causal LM: layouts read off the columns, labels only on target tokens (prompts and non-assistant turns masked),
a token-averaged loss and split perplexity checked by hand, packing that keeps attention inside examples, the
layer map with tied heads, LoRA [auto], real fits of GPT-2 and Llama, generation and the served model."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pandas as pd
import pytest
import torch

from finesweep.errors import ConfigError, DataError
from finesweep.tasks import get
from finesweep.tasks.causal_lm import CausalLM, LMData, prompted
from finesweep.tasks.generation import sample
from finesweep.tasks.generative import load_tokenizer
from finesweep.tasks.lm_data import CHAT, PROMPT, TEXT, packs_separately, split_examples
from finesweep.tasks.registry import detect
from lm_models import (
    build_tiny_gpt2,
    build_tiny_llama,
    conversations,
    lm_config,
    reverse_pairs,
    serve,
    write_messages_jsonl,
    write_prompt_csv,
    write_text_csv,
)

TASK = CausalLM()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("lm")


@pytest.fixture(scope="module")
def gpt2(folder: Path) -> Path:
    return build_tiny_gpt2(folder / "gpt2")


@pytest.fixture(scope="module")
def llama(folder: Path) -> Path:
    return build_tiny_llama(folder / "llama")


@pytest.fixture(scope="module")
def pairs_csv(folder: Path) -> Path:
    return write_prompt_csv(folder / "pairs.csv")


@pytest.fixture(scope="module")
def chats(folder: Path) -> Path:
    return write_messages_jsonl(folder / "chats.jsonl", conversations(100))


def prepare(model: Path, path: Path, **values: Any) -> LMData:
    data = TASK.prepare(lm_config(model, path, **values))
    assert isinstance(data, LMData) and data.notes is not None
    return data


def examples_of(data: LMData) -> List[Any]:
    return [e for split in (data.train, data.val, data.test) if split is not None for e in split_examples(split)]


# --- reading ---------------------------------------------------------------------------------------------------------


def test_the_layout_is_chat_then_prompt_response_then_text(tmp_path: Path, gpt2: Path) -> None:
    path = tmp_path / "t.csv"
    frame = pd.DataFrame({"text": ["a b c"] * 20, "prompt": ["p"] * 20, "response": ["r"] * 20,
                          "messages": [json.dumps([{"role": "assistant", "content": "hi"}])] * 20})
    expected = [(["text", "prompt", "response", "messages"], CHAT), (["text", "prompt", "response"], PROMPT),
                (["text", "prompt"], TEXT), (["text"], TEXT)]
    for columns, layout in expected:
        frame[columns].to_csv(path, index=False)
        from finesweep.tasks.lm_data import read_lm_rows

        assert read_lm_rows(lm_config(gpt2, path).data).layout == layout, columns


BAD = {
    "no-known-column": ({"question": ["q"] * 12, "answer": ["a"] * 12}, {},
                        r"^data: causal_lm needs a chat column 'messages' \(data\.messages_column\), prompt and "
                        r"response columns 'prompt' and 'response' \(data\.prompt_column, data\.response_column\) or a "
                        r"text column 'text' \(data\.text_column\), got columns question, answer in .*bad\.csv\. Set "
                        r"those keys to your columns\.$"),
    "empty-targets": ({"prompt": ["q"] * 12, "response": [""] * 6 + [None] * 6}, {},
                      r"^data\.response_column: no row of .*bad\.csv has a non-empty target in column 'response' "
                      r"\(12 rows read\)\. Give the rows a target, or point data\.response_column at the right "
                      r"column\.$"),
    "bad-json": ({"messages": ["[{'role': 'user'}]"] * 12}, {},
                 r"^data\.messages_column: row 1 of column 'messages' is not JSON, got .*\. Give each row a list of "
                 r"turns"),
    "bad-turns": ({"turns": [json.dumps([{"role": "user"}])] * 12}, {"data.messages_column": "turns"},
                  r"^data\.messages_column: row 1 of column 'turns' must be a list of turns with a string role and "
                  r"content, got .*\. Write each turn as"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_data_is_one_line_naming_the_fix(name: str, tmp_path: Path, gpt2: Path) -> None:
    columns, values, message = BAD[name]
    pd.DataFrame(columns).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=message) as caught:
        TASK.inspect(lm_config(gpt2, tmp_path / "bad.csv", **values).data)
    assert "\n" not in str(caught.value)


def test_chats_need_a_tokenizer_with_a_chat_template(gpt2: Path, chats: Path) -> None:
    with pytest.raises(DataError, match=r"^data\.messages_column: the tokenizer \(.*\) has no chat template to render "
                                        r"the turns of column 'messages'\. Use a chat model's tokenizer \(one with "
                                        r"chat_template\), or give prompt and response columns instead\.$"):
        TASK.prepare(lm_config(gpt2, chats))


def test_rows_without_a_target_are_dropped_and_counted(tmp_path: Path, gpt2: Path) -> None:
    pairs = reverse_pairs(40)
    frame = pd.DataFrame({"prompt": [p for p, _ in pairs], "response": [r for _, r in pairs]})
    frame.loc[[3, 7], "response"] = ["", None]
    frame.loc[5, "prompt"] = None  # no prompt: a continuation from nothing, kept
    frame.to_csv(tmp_path / "p.csv", index=False)
    data = prepare(gpt2, tmp_path / "p.csv")
    assert sum(data.notes.examples) == 38 and data.notes.dropped == 2
    assert "2 rows without a target and 0 whose target max_length cut away were dropped" in data.describe()


# --- tokens and labels -------------------------------------------------------------------------------------------


def test_prompt_tokens_get_no_label_and_the_response_ends_with_eos(gpt2: Path, pairs_csv: Path) -> None:
    data = prepare(gpt2, pairs_csv)
    tokenizer = load_tokenizer(str(gpt2))
    by_ids = {tuple(ids): labels for ids, labels in examples_of(data)}
    for prompt, response in reverse_pairs(200):
        p = tokenizer(prompt)["input_ids"]
        r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert by_ids[tuple(p + r)] == [-100] * len(p) + r
    assert len(examples_of(data)) == 200 and data.train.features["input_ids"].dtype == np.int32
    assert set(data.train.features) == {"input_ids", "attention_mask"} and data.train.labels.dtype == np.int64


def test_a_text_is_all_target_and_long_ones_keep_their_start(gpt2: Path, tmp_path: Path) -> None:
    path = write_text_csv(tmp_path / "t.csv", rows=40)
    data = prepare(gpt2, path, **{"data.max_length": 16})
    tokenizer = load_tokenizer(str(gpt2))
    texts = pd.read_csv(path)["text"]
    expected = {tuple((tokenizer(t)["input_ids"] + [tokenizer.eos_token_id])[:16]) for t in texts}
    found = examples_of(data)
    assert {tuple(ids) for ids, _ in found} == expected
    assert all(labels[1:] == ids[1:] for ids, labels in found), "every token after the first is a target"


def test_a_long_prompt_keeps_its_end_and_half_the_length_for_the_response(llama: Path, tmp_path: Path) -> None:
    prompt, response = "reverse: " + " ".join(["red cat sun moon"] * 10), " ".join(["tree"] * 30)
    pd.DataFrame({"prompt": [prompt] * 12, "response": [response] * 12}).to_csv(tmp_path / "p.csv", index=False)
    data = prepare(llama, tmp_path / "p.csv", **{"data.max_length": 24})
    tokenizer = load_tokenizer(str(llama))
    ids, labels = examples_of(data)[0]
    p, r = tokenizer(prompt)["input_ids"], tokenizer(response, add_special_tokens=False)["input_ids"]
    assert len(ids) == 24 and ids[0] == tokenizer.bos_token_id, "the bos stays first"
    assert ids[1:12] == p[-11:] and ids[12:] == r[:12], "the prompt's end, then half the length of response"
    assert labels == [-100] * 12 + r[:12]


def test_chat_labels_are_exactly_the_assistant_turns(llama: Path, chats: Path) -> None:
    data = prepare(llama, chats)
    tokenizer = load_tokenizer(str(llama))
    rendered = {tokenizer.apply_chat_template(chat, tokenize=False): chat for chat in conversations(100)}
    assert data.notes.layout == CHAT and sum(data.notes.examples) == 100
    for ids, labels in examples_of(data):
        chat = rendered[tokenizer.decode(ids)]
        runs, current = [], []
        for token, label in zip(ids, labels, strict=True):
            if label != -100:
                assert label == token
                current.append(token)
            elif current:
                runs.append(tokenizer.decode(current))
                current = []
        runs += [tokenizer.decode(current)] if current else []
        assert runs == [t["content"] + "</s>" for t in chat if t["role"] == "assistant"], "no system or user token"


# --- the loss, its weight and perplexity --------------------------------------------------------------------------


def test_the_loss_is_the_mean_over_response_tokens_only(gpt2: Path, pairs_csv: Path) -> None:
    data = prepare(gpt2, pairs_csv)
    batch = TASK.collate(data.train, range(6))
    labels = batch["labels"]
    torch.manual_seed(0)
    logits = torch.randn(*labels.shape, 1000)
    kept = [(b, p) for b in range(labels.shape[0]) for p in range(labels.shape[1] - 1) if labels[b, p + 1] != -100]
    by_hand = -sum(torch.log_softmax(logits[b, p], -1)[labels[b, p + 1]] for b, p in kept) / len(kept)
    assert float(TASK.loss(logits, labels)) == pytest.approx(float(by_hand), rel=1e-5)
    assert TASK.loss_weight(labels) == len(kept) == int((labels[:, 1:] != -100).sum())
    prompt = torch.zeros_like(labels, dtype=torch.bool)
    prompt[:, :-1] = labels[:, 1:] == -100  # the positions that predict a prompt token (or padding)
    changed = torch.where(prompt[..., None], torch.randn_like(logits) * 5, logits)
    assert float(TASK.loss(changed, labels)) == pytest.approx(float(by_hand), rel=1e-5), "prompt tokens count"
    unmasked = torch.where(labels == -100, batch["features"]["input_ids"], labels)
    assert float(TASK.loss(logits, unmasked)) != pytest.approx(float(by_hand), rel=1e-3)


def test_perplexity_is_exp_of_the_token_weighted_loss_over_the_split() -> None:
    torch.manual_seed(1)
    batches = []
    for rows, width, targets in ((2, 5, 3), (3, 9, 14), (1, 4, 1), (4, 7, 20)):
        labels, after_first = torch.full((rows, width), -100), torch.full((rows * (width - 1),), -100)
        after_first[torch.randperm(rows * (width - 1))[:targets]] = torch.randint(0, 50, (targets,))
        labels[:, 1:] = after_first.reshape(rows, width - 1)
        batches.append((torch.randn(rows, width, 50) * 2, labels))
    metric = TASK.metrics(None, "val/")  # type: ignore[arg-type]
    nll, tokens, per_batch = 0.0, 0, []
    for logits, labels in batches:
        metric.update(TASK.predictions(logits), labels)
        loss, weight = float(TASK.loss(logits, labels)), TASK.loss_weight(labels)
        nll += loss * weight
        tokens += weight
        per_batch.append(math.exp(loss))
    assert tokens == 38
    perplexity = float(metric.compute()["val/perplexity"])
    assert perplexity == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert perplexity != pytest.approx(sum(per_batch) / len(per_batch), rel=1e-2)


def test_collate_cuts_features_and_labels_to_the_longest_row(gpt2: Path, pairs_csv: Path) -> None:
    data = prepare(gpt2, pairs_csv)
    batch = TASK.collate(data.val, [0, 1, 2])
    width = int(data.val.features["attention_mask"][:3].sum(axis=1).max())
    assert batch["features"]["input_ids"].shape == batch["labels"].shape == (3, width)


# --- packing -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_packed_examples_attend_only_to_themselves(kind: str, request: pytest.FixtureRequest,
                                                   pairs_csv: Path) -> None:
    model_path = request.getfixturevalue(kind)
    config = lm_config(model_path, pairs_csv, **{"data.pack": True, "data.max_length": 64})
    data = prepare(model_path, pairs_csv, **{"data.pack": True, "data.max_length": 64})
    model = TASK.build_model(config, data).eval()
    assert packs_separately(kind) and "packed into" in data.describe()
    batch = TASK.collate(data.val, [0, 1])
    with torch.no_grad():
        packed = TASK.forward(model, batch["features"])
    positions = batch["features"]["position_ids"]
    compared = 0
    for row in range(2):
        width = int(batch["features"]["attention_mask"][row].sum())
        starts = (positions[row, :width] == 0).nonzero().flatten().tolist()
        for start, end in zip(starts, [*starts[1:], width], strict=True):
            with torch.no_grad():
                alone = model(input_ids=batch["features"]["input_ids"][row, start:end][None]).logits[0]
            torch.testing.assert_close(packed[row, start:end], alone, atol=1e-5, rtol=1e-4)
            compared += 1
    assert compared >= 6, "blocks of several examples"
    unpacked = prepare(model_path, pairs_csv, **{"data.max_length": 64})
    assert TASK.loss_weight(torch.from_numpy(data.val.labels)) == \
        TASK.loss_weight(torch.from_numpy(unpacked.val.labels)), "the same target tokens, packed or not"


def test_which_models_keep_packed_examples_apart(caplog: pytest.LogCaptureFixture) -> None:
    from finesweep.tasks.lm_data import warn_if_mixed

    assert all(packs_separately(kind) for kind in ("gpt2", "llama", "mistral", "qwen2", "gpt-sw3", "gemma3_text"))
    assert not any(packs_separately(kind) for kind in ("rwkv", "mamba", "xlnet", "no_such_model"))
    assert warn_if_mixed("llama", pack=True) is None and warn_if_mixed("rwkv", pack=False) is None
    with caplog.at_level(logging.WARNING, logger="finesweep.tasks"):
        note = warn_if_mixed("rwkv", pack=True)
    assert note == ("packed examples attend to each other within a block: transformers' rwkv model does not build "
                    "its mask from restarting position ids (create_causal_mask); set data.pack=false to keep them "
                    "apart")
    assert [r.getMessage() for r in caplog.records] == [note]


@pytest.mark.parametrize("layout", ["pairs", "text"])
def test_packing_fills_blocks_with_whole_examples(layout: str, gpt2: Path, pairs_csv: Path, tmp_path: Path) -> None:
    path = pairs_csv if layout == "pairs" else write_text_csv(tmp_path / "t.csv", rows=60, seed=3)
    packed = prepare(gpt2, path, **{"data.pack": True, "data.max_length": 96})
    plain = prepare(gpt2, path, **{"data.max_length": 96})
    assert len(packed.train) < len(plain.train) / 1.5
    assert split_examples(packed.train) == split_examples(plain.train), "the same examples, in order"
    assert packed.train.features["position_ids"].dtype == np.int32
    weight = [TASK.loss_weight(torch.from_numpy(d.train.labels)) for d in (packed, plain)]
    assert weight[0] == weight[1] == packed.notes.target_tokens - sum(
        TASK.loss_weight(torch.from_numpy(s.labels)) for s in (plain.val, plain.test) if s is not None), \
        "no example's first token is predicted from the one before it"


# --- the model ------------------------------------------------------------------------------------------------------


def test_layer_maps_of_gpt2_and_llama(gpt2: Path, llama: Path, pairs_csv: Path) -> None:
    for path, embeddings, head, other in (
            (gpt2, ("transformer.wte.weight", "transformer.wpe.weight"), (), ("transformer.ln_f.weight",
                                                                              "transformer.ln_f.bias")),
            (llama, ("model.embed_tokens.weight",), ("lm_head.weight",), ("model.norm.weight",))):
        config = lm_config(path, pairs_csv)
        model = TASK.build_model(config, TASK.prepare(config))
        parts = TASK.layer_map(model)
        assert (parts.embeddings, parts.head, parts.other, parts.num_layers) == (embeddings, head, other, 2)
        assert TASK.new_head is False, "LoRA keeps the pretrained head frozen"
        placed = [*parts.embeddings, *(n for layer in parts.layers for n in layer), *parts.other, *parts.head]
        assert sorted(placed) == sorted(n for n, _ in model.named_parameters()), "every parameter once"


def test_head_only_trains_llamas_own_head_and_is_refused_for_a_tied_one(gpt2: Path, llama: Path,
                                                                        pairs_csv: Path) -> None:
    from finesweep.finetune.module import check
    from finesweep.finetune.strategies import make_strategy

    config = lm_config(llama, pairs_csv, **{"finetune.strategy": "head_only"})
    model = make_strategy(config.finetune, TASK).apply(TASK.build_model(config, TASK.prepare(config)))
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["lm_head.weight"]
    for strategy in ("head_only", "gradual_unfreeze"):
        with pytest.raises(ConfigError, match=rf"^finetune\.strategy={strategy} starts from the language-model head "
                                              r"alone, but GPT2LMHeadModel's output layer is tied to its input "
                                              r"embeddings \(no weights of its own\), got strategy="):
            check(lm_config(gpt2, pairs_csv, **{"finetune.strategy": strategy}), TASK)


def test_freezing_freezes_a_tied_output_layer_with_the_embeddings(gpt2: Path, pairs_csv: Path) -> None:
    from finesweep.finetune.strategies import make_strategy

    config = lm_config(gpt2, pairs_csv, **{"finetune.strategy": "freeze", "finetune.freeze_layers": 1})
    model = make_strategy(config.finetune, TASK).apply(TASK.build_model(config, TASK.prepare(config)))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert {"transformer.wte.weight", "transformer.wpe.weight"} <= frozen
    assert model.lm_head.weight is model.transformer.wte.weight and not model.lm_head.weight.requires_grad
    assert not any(n.startswith("transformer.h.1.") for n in frozen)


@pytest.mark.parametrize("kind,adapted", [("gpt2", "c_attn"), ("llama", "q_proj")])
def test_lora_auto_adapts_peft_default_targets_and_leaves_the_head(kind: str, adapted: str,
                                                                   request: pytest.FixtureRequest,
                                                                   pairs_csv: Path) -> None:
    from finesweep.finetune.strategies import make_strategy

    config = lm_config(request.getfixturevalue(kind), pairs_csv,
                       **{"finetune.strategy": "lora", "finetune.lora.target_modules": ["auto"]})
    model = make_strategy(config.finetune, TASK).apply(TASK.build_model(config, TASK.prepare(config)))
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(".lora_" in n for n in trained), "adapters only: the pretrained head stays frozen"
    assert any(f".{adapted}.lora_A" in n for n in trained)


def test_gradient_checkpointing_turns_the_cache_off_and_still_trains(llama: Path, pairs_csv: Path) -> None:
    config = lm_config(llama, pairs_csv, **{"model.gradient_checkpointing": True})
    data = TASK.prepare(config)
    model = TASK.build_model(config, data)
    assert model.is_gradient_checkpointing and model.config.use_cache is False
    model.train()
    batch = TASK.collate(data.train, range(4))
    TASK.loss(TASK.forward(model, batch["features"]), batch["labels"]).backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad is not None


def test_4bit_without_cuda_is_one_clear_config_error(llama: Path, pairs_csv: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the 4-bit build needs bitsandbytes' kernels, checked on a GPU")
    config = lm_config(llama, pairs_csv, **{"cluster.gpus_per_trial": 1.0, "finetune.strategy": "lora",
                                            "model.load_in_4bit": True})
    with pytest.raises(ConfigError, match=r"^model\.load_in_4bit needs a CUDA GPU \(bitsandbytes' 4-bit kernels\), "
                                          r"got none on this machine\. Run the trials on a GPU"):
        TASK.build_model(config, TASK.prepare(config))


def test_4bit_without_bitsandbytes_is_one_clear_config_error(llama: Path, pairs_csv: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    config = lm_config(llama, pairs_csv, **{"cluster.gpus_per_trial": 1.0, "finetune.strategy": "lora",
                                            "model.load_in_4bit": True})
    with pytest.raises(ConfigError, match=r"^model\.load_in_4bit needs the bitsandbytes package, got it not "
                                          r"installed\. Install it \(pip install 'finesweep\[generative\]'\), or set "
                                          r"model\.load_in_4bit=false\.$"):
        TASK.build_model(config, TASK.prepare(config))


def test_saved_weights_load_back_with_the_same_outputs(llama: Path, pairs_csv: Path, tmp_path: Path) -> None:
    config = lm_config(llama, pairs_csv)
    data = TASK.prepare(config)
    model = TASK.build_model(config, data).eval()
    TASK.save_trained(model, tmp_path / "w")
    assert (tmp_path / "w" / "model.safetensors").is_file()
    loaded = TASK.load_trained(tmp_path / "w", data).eval()
    ids = torch.from_numpy(data.val.features["input_ids"][:2, :10].astype(np.int64))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_probe_nll_is_the_summed_next_token_loss(gpt2: Path, pairs_csv: Path) -> None:
    config = lm_config(gpt2, pairs_csv)
    model = TASK.build_model(config, TASK.prepare(config)).eval()
    ids = torch.randint(0, 1000, (3, 12))
    found = TASK.probe_nll(model, ids)
    assert found is not None
    nll, count = found
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits, -1)
    by_hand = -sum(log_probs[b, p, ids[b, p + 1]] for b in range(3) for p in range(11))
    assert count == 33 and float(nll) == pytest.approx(float(by_hand), rel=1e-5)


# --- generation -------------------------------------------------------------------------------------------------------


def test_prompts_are_the_prompt_the_chat_before_its_last_answer_or_half_a_text() -> None:
    assert prompted(([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]), TEXT) == prompted(([1, 2, 3, 4, 5], [0] * 5), TEXT)
    assert prompted(([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]), TEXT).prompt == [1, 2]
    chat = ([1, 2, 3, 4, 5, 6, 7, 8], [-100, -100, 3, 4, -100, -100, 7, 8])
    assert (prompted(chat, CHAT).prompt, prompted(chat, CHAT).reference) == ([1, 2, 3, 4, 5, 6], [7, 8])


def test_generate_scores_a_seeded_sample_of_validation_prompts(llama: Path, chats: Path) -> None:
    from rouge_score import rouge_scorer

    config = lm_config(llama, chats, **{"data.max_target_length": 6})
    data = TASK.prepare(config)
    model = TASK.build_model(config, data)
    generated = TASK.generate(model, data.val, data, config, rows=4)
    assert generated is not None and len(generated.rows) == 4
    tokenizer = load_tokenizer(str(llama))
    chosen = [split_examples(data.val)[i] for i in sample(len(split_examples(data.val)), 4, config.data.seed)]
    for row, (ids, labels) in zip(generated.rows, chosen, strict=True):
        assert row["prompt"].endswith("<|assistant|>\n") and row["prompt"] == tokenizer.decode(
            prompted((ids, labels), CHAT).prompt)
        last_question = row["prompt"].rsplit("reverse: ", 1)[1].split("</s>")[0]
        assert row["reference"] == " ".join(reversed(last_question.split())), "the last assistant turn"
        assert len(tokenizer(row["generation"], add_special_tokens=False)["input_ids"]) <= 8
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = sum(scorer.score(r["reference"], r["generation"])["rougeL"].fmeasure for r in generated.rows) / 4
    assert generated.metrics["rougeL"] == pytest.approx(rouge)
    assert set(generated.metrics) == {"rouge1", "rouge2", "rougeL", "exact_match"}
    assert TASK.generate(model, data.val, data, config, rows=4) == generated, "the same sample every time"
    assert not TASK.generates_each_report(config)


# --- detection -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("columns,expected", [
    (["prompt", "response"], "causal_lm"), (["messages"], "causal_lm"), (["text", "messages"], "causal_lm"),
    (["text", "label"], "auto"), (["prompt", "response", "label"], "auto"), (["text"], "auto"),
    (["prompt", "text"], "auto"),
], ids=["prompt-response", "messages", "text-and-messages", "text-label", "with-label", "text-only",
       "prompt-without-response"])
def test_auto_detects_generative_tables_only_without_labels(columns: List[str], expected: str, tmp_path: Path,
                                                            gpt2: Path) -> None:
    pd.DataFrame({c: ["x"] for c in columns}).to_csv(tmp_path / "t.csv", index=False)
    assert detect(lm_config(gpt2, tmp_path / "t.csv", task="auto").data) == expected
    if expected != "auto":
        assert get("auto", lm_config(gpt2, tmp_path / "t.csv", task="auto").data).name == expected


# --- a real fit -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,data_file", [("gpt2", "pairs_csv"), ("llama", "chats")])
def test_a_lora_fit_lowers_the_validation_loss(kind: str, data_file: str, request: pytest.FixtureRequest,
                                               tmp_path: Path) -> None:
    from finesweep.execution.trial import fit
    from finesweep.tasks.preparation import prepare_all

    model_path, path = request.getfixturevalue(kind), request.getfixturevalue(data_file)
    config = lm_config(model_path, path, storage=tmp_path, **{
        "finetune.strategy": "lora", "finetune.lora.target_modules": ["auto"], "finetune.lora.r": 8,
        "optim.lr": 3e-2, "scheduler.max_epochs": 3, "data.batch_size": 16, "data.max_target_length": 6,
        "data.generate_every_epoch": kind == "llama", "final.generate_samples": 3})
    cache = prepare_all(config, ())
    data = cache.for_config(config)
    untrained = TASK.build_model(config, data).eval()
    whole = TASK.collate(data.val, range(len(data.val)))
    with torch.no_grad():
        before = float(TASK.loss(TASK.forward(untrained, whole["features"]), whole["labels"]))
    reports: List[Dict[str, float]] = []
    module = fit(config, cache, lambda metrics, folder: reports.append(metrics))
    losses = [m["val/loss"] for m in reports]
    assert len(losses) == 3 and losses == sorted(losses, reverse=True) and losses[-1] < before - 0.08, (before, losses)
    assert reports[-1]["val/perplexity"] == pytest.approx(math.exp(losses[-1]), rel=1e-4), "the split's token mean"
    generated = {"val/rouge1", "val/rouge2", "val/rougeL", "val/exact_match"}
    assert generated <= set(reports[0]) if kind == "llama" else not generated & set(reports[0]), \
        "generated text is scored at each report only with data.generate_every_epoch"
    assert type(module.model).__name__ == "PeftModelForCausalLM"
    assert all(".lora_" in n for n, p in module.model.named_parameters() if p.requires_grad)


# --- serving ----------------------------------------------------------------------------------------------------------


def test_the_served_model_continues_a_prompt_greedily_or_by_sampling(gpt2: Path, pairs_csv: Path,
                                                                     tmp_path: Path) -> None:
    from finesweep.tasks.generation import generate_texts

    served = serve(TASK, gpt2, pairs_csv, tmp_path)
    assert served.meta["chat"] is False and served.meta["max_new_tokens"] == 5
    prompts = ["reverse: red cat sun", "the"]
    answer = served.model.predict(pd.DataFrame({"prompt": prompts}), params={"max_new_tokens": 4})
    assert list(answer.columns) == ["generation"] and len(answer) == 2
    tokenizer = load_tokenizer(str(gpt2))
    weights = TASK.load_trained(served.package, served.data)
    expected = generate_texts(weights, tokenizer, [tokenizer(p)["input_ids"] for p in prompts], 4, 8, False)
    assert answer["generation"].tolist() == expected, "tokenised and generated as in fine-tuning"
    default = served.model.predict(pd.DataFrame({"prompt": prompts}))
    assert all(len(tokenizer(g, add_special_tokens=False)["input_ids"]) <= 6 for g in default["generation"])
    torch.manual_seed(0)
    sampled = served.model.predict(pd.DataFrame({"prompt": prompts * 4}), params={"temperature": 1.5, "top_p": 0.9})
    assert len(set(sampled["generation"])) > 2, "temperature > 0 samples"


def test_a_chat_model_is_served_chats_and_plain_prompts(llama: Path, chats: Path, tmp_path: Path) -> None:
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    served = serve(TASK, llama, chats, tmp_path)
    assert served.meta["chat"] is True
    turns = [{"role": "user", "content": "reverse: red cat"}]
    as_list = served.model.predict(pd.DataFrame({"messages": [turns]}), params={"max_new_tokens": 3})
    as_prompt = served.model.predict(pd.DataFrame({"prompt": ["reverse: red cat"]}), params={"max_new_tokens": 3})
    assert as_list["generation"].tolist() == as_prompt["generation"].tolist(), "a prompt is one user turn"
    body = TASK.request_example(served.meta)
    frame = infer_and_parse_data(body, served.model.metadata.get_input_schema())
    answer = served.model.predict(frame, params=body["params"])
    assert len(answer) == 1 and isinstance(answer["generation"][0], str)
