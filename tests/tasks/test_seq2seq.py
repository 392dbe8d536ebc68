"""Seq2seq: source and target arrays (the decoder reads the target shifted right), a loss equal to the model's own,
T5 and BART layer maps, the probe's likelihood by hand, a real T5 fit with generated text scored each report, bad
data, detection, and the served model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List

import numpy as np
import pandas as pd
import pytest
import torch

from finesweep.errors import DataError
from finesweep.tasks import get
from finesweep.tasks.generative import load_tokenizer
from finesweep.tasks.registry import detect
from finesweep.tasks.seq2seq import Seq2Seq, Seq2SeqData
from lm_models import build_tiny_t5, lm_config, reverse_pairs, serve, write_source_target_csv

TASK = Seq2Seq()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("seq2seq")


@pytest.fixture(scope="module")
def t5(folder: Path) -> Path:
    return build_tiny_t5(folder / "t5")


@pytest.fixture(scope="module")
def pairs_csv(folder: Path) -> Path:
    return write_source_target_csv(folder / "pairs.csv")


def prepare(model: Path, path: Path, **values: object) -> Seq2SeqData:
    data = TASK.prepare(lm_config(model, path, "seq2seq", **values))
    assert isinstance(data, Seq2SeqData) and data.notes is not None
    return data


def test_sources_targets_and_the_shifted_decoder_input(t5: Path, pairs_csv: Path) -> None:
    data = prepare(t5, pairs_csv, **{"data.max_target_length": 6})
    tokenizer = load_tokenizer(str(t5))
    frame = pd.read_csv(pairs_csv)
    seen = 0
    for split in (data.train, data.val, data.test):
        assert split is not None
        for row in range(len(split)):
            source = split.features["input_ids"][row][split.features["attention_mask"][row] == 1].tolist()
            text = tokenizer.decode(source, skip_special_tokens=True)
            target = tokenizer(text_target=frame.loc[frame["source"] == text, "target"].iloc[0])["input_ids"][:6]
            assert source == tokenizer(text)["input_ids"], "the source as the tokenizer encodes it (eos appended)"
            labels = split.labels[row]
            assert labels[:len(target)].tolist() == target and (labels[len(target):] == -100).all()
            decoder = split.features["decoder_input_ids"][row][split.features["decoder_attention_mask"][row] == 1]
            assert decoder.tolist() == [tokenizer.pad_token_id, *target[:-1]], "T5's decoder starts from <pad>"
            seen += 1
    assert seen == 200 and data.notes.cut_targets > 0, "some targets are longer than 6 tokens"
    assert data.train.features["input_ids"].dtype == np.int32 and data.train.labels.dtype == np.int64
    assert data.train.features["decoder_input_ids"].shape[1] == data.train.labels.shape[1] == 6


def test_collate_cuts_each_side_to_its_longest_row(t5: Path, pairs_csv: Path) -> None:
    data = prepare(t5, pairs_csv)
    batch = TASK.collate(data.train, [0, 1, 2, 3])
    source = int(data.train.features["attention_mask"][:4].sum(axis=1).max())
    target = int(data.train.features["decoder_attention_mask"][:4].sum(axis=1).max())
    assert batch["features"]["input_ids"].shape == batch["features"]["attention_mask"].shape == (4, source)
    assert batch["features"]["decoder_input_ids"].shape == batch["labels"].shape == (4, target)
    assert batch["labels"].is_contiguous()


def test_the_loss_and_its_weight_are_the_models_own_over_target_tokens(t5: Path, pairs_csv: Path) -> None:
    config = lm_config(t5, pairs_csv, "seq2seq")
    data = TASK.prepare(config)
    model = TASK.build_model(config, data).eval()
    batch = TASK.collate(data.train, range(8))
    features, labels = batch["features"], batch["labels"]
    with torch.no_grad():
        ours = TASK.loss(TASK.forward(model, features), labels)
        theirs = model(input_ids=features["input_ids"], attention_mask=features["attention_mask"], labels=labels).loss
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5), "T5 shifts the labels itself: the same loss"
    assert TASK.loss_weight(labels) == int((labels != -100).sum()), "no shift: every target token"


def test_t5_and_bart_layer_maps_put_the_encoder_below_the_decoder(t5: Path, pairs_csv: Path) -> None:
    from transformers import BartConfig, BartForConditionalGeneration

    config = lm_config(t5, pairs_csv, "seq2seq")
    model = TASK.build_model(config, TASK.prepare(config))
    parts = TASK.layer_map(model)
    assert parts.embeddings == ("shared.weight",) and parts.head == ()
    assert [".".join(layer[0].split(".")[:3]) for layer in parts.layers] == \
        ["encoder.block.0", "encoder.block.1", "decoder.block.0", "decoder.block.1"]
    assert "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight" in parts.layers[0]
    assert parts.other == ("encoder.final_layer_norm.weight", "decoder.final_layer_norm.weight")
    with torch.device("meta"):
        bart = BartForConditionalGeneration(BartConfig(vocab_size=64, d_model=16, encoder_layers=2, decoder_layers=3,
                                                       encoder_attention_heads=2, decoder_attention_heads=2,
                                                       encoder_ffn_dim=32, decoder_ffn_dim=32))
    parts = TASK.layer_map(bart)
    assert [layer[0].rsplit(".", 3)[0] for layer in parts.layers] == \
        ["model.encoder.layers.0", "model.encoder.layers.1", "model.decoder.layers.0", "model.decoder.layers.1",
         "model.decoder.layers.2"]
    assert set(parts.embeddings) == {"model.shared.weight", *(f"model.{side}.{name}" for side in ("encoder", "decoder")
                                                              for name in ("embed_positions.weight",
                                                                           "layernorm_embedding.weight",
                                                                           "layernorm_embedding.bias"))}
    assert parts.head == () and parts.other == (), "BART's lm_head is the shared embedding; no final norm"


def test_probe_reads_the_first_half_and_scores_the_second(t5: Path, pairs_csv: Path) -> None:
    config = lm_config(t5, pairs_csv, "seq2seq")
    model = TASK.build_model(config, TASK.prepare(config)).eval()
    ids = torch.randint(3, 1000, (2, 9))
    found = TASK.probe_nll(model, ids)
    assert found is not None
    nll, count = found
    with torch.no_grad():
        loss = model(input_ids=ids[:, :4], labels=ids[:, 4:].contiguous()).loss  # the mean over the second halves
    assert count == 10 and float(nll) == pytest.approx(float(loss) * 10, rel=1e-5)


def test_generation_is_scored_every_report_and_bleu_only_when_asked(t5: Path, pairs_csv: Path) -> None:
    config = lm_config(t5, pairs_csv, "seq2seq", **{"data.max_target_length": 12, "data.metric": "bleu"})
    data = TASK.prepare(config)
    model = TASK.build_model(config, data)
    assert TASK.generates_each_report(config)
    generated = TASK.generate(model, data.val, data, config, rows=5)
    assert generated is not None and set(generated.metrics) == {"rouge1", "rouge2", "rougeL", "exact_match", "bleu"}
    pairs = dict(reverse_pairs(200))
    for row in generated.rows:
        source = row["prompt"].replace("</s>", "")
        assert row["reference"] == pairs[source], "the reference is the source's own target"


BAD = {
    "missing-column": ({"input": ["a"] * 12, "target": ["b"] * 12},
                       r"^data\.source_column: column 'source' not in .*bad\.csv \(columns: input, target\)\. Set "
                       r"data\.source_column to one of them\.$"),
    "empty-targets": ({"source": ["a"] * 12, "target": [" "] * 6 + [None] * 6},
                      r"^data\.target_column: no row of .*bad\.csv has both a non-empty source in 'source' and a "
                      r"non-empty target in 'target' \(12 rows read\)\. Fill them, or point data\.source_column and "
                      r"data\.target_column at the right columns\.$"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_data_is_one_line(name: str, tmp_path: Path, t5: Path) -> None:
    columns, message = BAD[name]
    pd.DataFrame(columns).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=message):
        TASK.inspect(lm_config(t5, tmp_path / "bad.csv", "seq2seq").data)


def test_rows_without_source_or_target_are_dropped_and_described(t5: Path, tmp_path: Path) -> None:
    pairs = reverse_pairs(30)
    frame = pd.DataFrame({"source": [s for s, _ in pairs], "target": [t for _, t in pairs]})
    frame.loc[2, "target"], frame.loc[4, "source"] = "", None
    frame.to_csv(tmp_path / "p.csv", index=False)
    data = prepare(t5, tmp_path / "p.csv")
    assert len(data.train) + len(data.val) + len(data.test or ()) == 28
    assert data.describe().startswith("22/3/3 train/val/test rows, seq2seq, ")
    assert "2 rows with an empty source or target dropped" in data.describe()


@pytest.mark.parametrize("columns,expected", [
    (["source", "target"], "seq2seq"), (["source", "target", "label"], "auto"), (["source", "text"], "auto"),
], ids=["source-target", "with-label", "source-only"])
def test_auto_detects_source_target_tables(columns: List[str], expected: str, tmp_path: Path, t5: Path) -> None:
    pd.DataFrame({c: ["x"] for c in columns}).to_csv(tmp_path / "t.csv", index=False)
    assert detect(lm_config(t5, tmp_path / "t.csv", "auto").data) == expected
    if expected != "auto":
        assert get("auto", lm_config(t5, tmp_path / "t.csv", "auto").data).name == expected


def test_a_t5_fit_lowers_the_validation_loss(t5: Path, pairs_csv: Path, tmp_path: Path) -> None:
    from finesweep.execution.trial import fit
    from finesweep.tasks.preparation import prepare_all

    config = lm_config(t5, pairs_csv, "seq2seq", storage=tmp_path, **{
        "optim.lr": 5e-3, "scheduler.max_epochs": 3, "data.batch_size": 16, "data.max_target_length": 8,
        "final.generate_samples": 4})
    reports: List[Dict[str, float]] = []
    fit(config, prepare_all(config, ()), lambda metrics, folder: reports.append(metrics))
    losses = [m["val/loss"] for m in reports]
    assert len(losses) == 3 and losses == sorted(losses, reverse=True) and losses[-1] < losses[0] - 0.5, losses
    assert reports[-1]["val/perplexity"] == pytest.approx(math.exp(losses[-1]), rel=1e-4)
    assert set(TASK.objective_metrics) - {"val/bleu"} <= set(reports[0]), "generated text is scored every report"
    assert "val/bleu" not in reports[0], "BLEU only with data.metric: bleu"


def test_a_lora_fit_on_t5_adapts_q_and_v(t5: Path, pairs_csv: Path, tmp_path: Path) -> None:
    from finesweep.execution.trial import fit
    from finesweep.tasks.preparation import prepare_all

    config = lm_config(t5, pairs_csv, "seq2seq", storage=tmp_path, **{
        "finetune.strategy": "lora", "finetune.lora.target_modules": ["auto"], "optim.lr": 3e-2,
        "scheduler.max_epochs": 2, "data.batch_size": 16, "data.max_target_length": 8, "final.generate_samples": 2})
    reports: List[Dict[str, float]] = []
    module = fit(config, prepare_all(config, ()), lambda metrics, folder: reports.append(metrics))
    assert type(module.model).__name__ == "PeftModelForSeq2SeqLM"
    trained = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in module.model.named_parameters() if p.requires_grad}
    assert trained == {"q", "v"}, "peft's T5 targets, and nothing else"
    assert reports[-1]["val/loss"] < reports[0]["val/loss"]


def test_the_served_model_maps_a_source_to_its_output(t5: Path, pairs_csv: Path, tmp_path: Path) -> None:
    from finesweep.tasks.generation import generate_texts

    served = serve(TASK, t5, pairs_csv, tmp_path)
    assert served.meta["auto_class"] == "AutoModelForSeq2SeqLM" and served.meta["chat"] is False
    sources = ["reverse: red cat sun", "reverse: tree"]
    answer = served.model.predict(pd.DataFrame({"prompt": sources}), params={"max_new_tokens": 3})
    tokenizer = load_tokenizer(str(t5))
    weights = TASK.load_trained(served.package, served.data)
    expected = generate_texts(weights, tokenizer, [tokenizer(s)["input_ids"] for s in sources], 3, 8, True)
    assert answer["generation"].tolist() == expected


@pytest.mark.parametrize("task,metric,values,fix", [
    ("seq2seq", "val/bleu", {}, "data.metric=bleu"),
    ("causal_lm", "val/rougeL", {}, "data.generate_every_epoch=true"),
    ("causal_lm", "val/exact_match", {}, "data.generate_every_epoch=true"),
    ("seq2seq", "val/bleu", {"data.metric": "bleu"}, None),
    ("seq2seq", "val/rougeL", {}, None),
    ("causal_lm", "val/rougeL", {"data.generate_every_epoch": True}, None),
    ("causal_lm", "val/perplexity", {}, None),
])
def test_an_objective_only_some_settings_report_is_refused_without_them(task: str, metric: str,
                                                                        values: Dict[str, object], fix: str | None,
                                                                        tmp_path: Path) -> None:
    from finesweep.errors import ConfigError
    from finesweep.tasks.preparation import check_objective

    config = lm_config(tmp_path, tmp_path / "data.csv", task=task, **values)
    if fix is None:
        check_objective(metric, get(task), config)
        return
    with pytest.raises(ConfigError, match=rf"^objective\.metric: {metric} is reported by {task} trials only with "
                                          rf"{fix}, got {metric} without it\. Set {fix}, or use one of "):
        check_objective(metric, get(task), config)
