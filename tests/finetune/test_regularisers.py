"""L2-SP and L1: values computed by hand (or through peft's own merge), gradients, what is and is not penalised."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

from finesweep.finetune.regularisers import L2SP, l1_penalty
from finesweep.finetune.strategies import GradualUnfreezeStrategy, set_trainable, unfrozen_at, unwrap
from finesweep.tasks import LayerMap
from finesweep.tasks.text_classification import TextClassification

TASK = TextClassification()


def _pretrained(tiny_model: Path) -> Tuple[nn.Module, LayerMap]:
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model)
    return model, TASK.layer_map(model)


def _params(model: nn.Module) -> Dict[str, nn.Parameter]:
    return dict(unwrap(model).named_parameters())


def _backbone(parts: LayerMap) -> set:
    return set(parts.embeddings).union(*parts.layers, parts.other)


def test_l2sp_is_zero_on_the_pretrained_model(tiny_model: Path) -> None:
    model, parts = _pretrained(tiny_model)
    penalty = L2SP(model, parts, strength=0.3).penalty(model)
    assert penalty.shape == () and penalty.dtype == torch.float32
    assert penalty.item() == 0.0 and penalty.requires_grad


def test_l2sp_matches_a_hand_computed_value(tiny_model: Path) -> None:
    model, parts = _pretrained(tiny_model)
    l2sp = L2SP(model, parts, strength=0.2)
    with torch.no_grad():
        _params(model)["bert.embeddings.LayerNorm.bias"].add_(0.5)  # 32 values
        _params(model)["bert.encoder.layer.1.output.dense.bias"].sub_(0.25)  # 32 values
    # 0.2 / 2 * (32 * 0.5^2 + 32 * 0.25^2) = 0.1 * (8 + 2)
    assert l2sp.penalty(model).item() == pytest.approx(1.0, rel=1e-6)


def test_the_l2sp_gradient_is_strength_times_the_distance_from_pretrained(tiny_model: Path) -> None:
    model, parts = _pretrained(tiny_model)
    l2sp = L2SP(model, parts, strength=0.7)
    start = {name: param.detach().clone() for name, param in model.named_parameters()}
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    l2sp.penalty(model).backward()
    for name, param in model.named_parameters():
        if name in parts.head:
            assert param.grad is None, f"the head {name} has no pretrained value: no pull"
        else:
            torch.testing.assert_close(param.grad, 0.7 * (param.detach() - start[name]), rtol=1e-5, atol=1e-7)


def test_the_head_is_never_penalised(tiny_model: Path) -> None:
    model, parts = _pretrained(tiny_model)
    l2sp = L2SP(model, parts, strength=1.0)
    assert set(l2sp.snapshot) == _backbone(parts) and not set(l2sp.snapshot) & set(parts.head)
    with torch.no_grad():
        _params(model)["classifier.weight"].add_(3.0)
    assert l2sp.penalty(model).item() == 0.0


def test_gradual_unfreezing_is_penalised_from_the_stage_a_layer_trains_at(tiny_model: Path) -> None:
    model, parts = _pretrained(tiny_model)
    model = GradualUnfreezeStrategy(TASK, every=1).apply(model)  # stage 0: the head alone trains
    l2sp = L2SP(model, parts, strength=2.0)
    layer1 = parts.layers[1]
    with torch.no_grad():
        for name in layer1:
            _params(model)[name].add_(0.5)
    assert l2sp.penalty(model).item() == 0.0, "a frozen layer is not penalised"
    set_trainable(model, unfrozen_at(parts, 1))  # what the callback does at stage 1: the top layer trains
    elements = sum(_params(model)[name].numel() for name in layer1)
    assert l2sp.penalty(model).item() == pytest.approx(2.0 / 2 * elements * 0.25, rel=1e-5)


def test_a_resumed_trial_is_still_pulled_towards_the_pretrained_weights(tiny_model: Path) -> None:
    model, parts = _pretrained(tiny_model)
    trained = copy.deepcopy(model.state_dict())
    trained["bert.pooler.dense.bias"] = trained["bert.pooler.dense.bias"] + 1.0  # 32 values moved by 1
    fresh, _ = _pretrained(tiny_model)
    l2sp = L2SP(fresh, parts, strength=0.5)  # built on the fresh pretrained model, as the contract says
    fresh.load_state_dict(trained)  # then the checkpoint's weights are restored
    assert l2sp.penalty(fresh).item() == pytest.approx(0.5 / 2 * 32, rel=1e-6)


def test_a_language_models_own_head_is_pretrained_and_penalised() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=16, n_embd=8, n_layer=1, n_head=2,
                                       tie_word_embeddings=False))
    parts = TASK.layer_map(model)
    assert parts.head == ("lm_head.weight",)
    l2sp_new, l2sp_own = L2SP(model, parts, strength=2.0), L2SP(model, parts, strength=2.0, new_head=False)
    with torch.no_grad():
        model.lm_head.weight.add_(0.5)  # 40 x 8 values
    assert l2sp_new.penalty(model).item() == 0.0
    assert l2sp_own.penalty(model).item() == pytest.approx(2.0 / 2 * 320 * 0.25, rel=1e-6)


def lora_wrapped(model: nn.Module) -> nn.Module:
    """What finetune.strategy=lora makes of a classifier (r=4, alpha=8: scale 2, on query and value; the head in
    full), with peft directly."""
    from peft import LoraConfig, TaskType, get_peft_model

    return get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, lora_dropout=0.0,
                                            target_modules=["query", "value"], modules_to_save=["classifier"]))


def _lora(tiny_model: Path) -> Tuple[nn.Module, LayerMap]:
    wrapped = lora_wrapped(_pretrained(tiny_model)[0])
    return wrapped, TASK.layer_map(unwrap(wrapped))


def test_l2sp_of_lora_is_the_norm_of_the_update_a_merge_adds(tiny_model: Path) -> None:
    wrapped, parts = _lora(tiny_model)
    l2sp = L2SP(wrapped, parts, strength=0.4)
    assert l2sp.snapshot == {}, "no copy of the frozen base weights, nor of the adapters"
    assert len(l2sp.adapters) == 4, "query and value of 2 layers"
    assert l2sp.penalty(wrapped).item() == 0.0, "peft starts B at 0: no update yet"
    torch.manual_seed(2)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param))
    penalty = l2sp.penalty(wrapped)
    # Independently: merge with peft, and sum ||w - w0||^2 over the backbone against a fresh pretrained copy.
    merged = dict(copy.deepcopy(wrapped).merge_and_unload().named_parameters())
    pretrained = dict(_pretrained(tiny_model)[0].named_parameters())
    distance = sum(float((merged[name] - pretrained[name]).detach().pow(2).sum()) for name in pretrained
                   if name.startswith("bert."))
    assert distance > 1.0
    assert penalty.item() == pytest.approx(0.4 / 2 * distance, rel=1e-5)
    penalty.backward()
    lora_b = next(param for name, param in wrapped.named_parameters() if "lora_B" in name)
    assert lora_b.grad is not None and lora_b.grad.abs().sum() > 0


def test_l1_matches_a_hand_sum_of_the_trainable_weight_matrices() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, -4.0]]))  # |.| sums to 10
        model[0].bias.copy_(torch.tensor([5.0, -6.0]))  # a bias: left out
        model[2].weight.copy_(torch.tensor([[100.0, 100.0]]))
    model[2].weight.requires_grad_(False)  # frozen: left out
    penalty = l1_penalty(model, strength=0.5)
    assert penalty.shape == () and penalty.item() == pytest.approx(5.0)
    penalty.backward()
    torch.testing.assert_close(model[0].weight.grad, 0.5 * torch.tensor([[1.0, -1.0], [1.0, -1.0]]))
    assert model[0].bias.grad is None and model[1].weight.grad is None


def test_l1_of_a_fully_frozen_model_is_zero(tiny_model: Path) -> None:
    model, _ = _pretrained(tiny_model)
    model.requires_grad_(False)
    assert l1_penalty(model, strength=1.0).item() == 0.0
