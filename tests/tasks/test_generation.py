"""Scoring generated text against rouge-score and sacreBLEU, the seeded sample, and batched greedy generation that
gives every prompt the continuation it has alone."""

from __future__ import annotations

import random
from pathlib import Path
from typing import List, Tuple

import pytest
import sacrebleu
import torch
from rouge_score import rouge_scorer

from finesweep.tasks.generation import generate_texts, padded, sample
from finesweep.tasks.text_scores import bleu_tokens, rouge_tokens, score_texts
from lm_models import build_tiny_gpt2, build_tiny_t5

PAIRS: List[Tuple[str, str]] = [
    ("the cat sat on the mat", "the cat sat on the mat"),
    ("the cat sat on the mat", "a cat was sitting on the mat"),
    ("Police killed the gunman.", "The gunman was shot dead by police."),
    ("", "nothing was generated"),
    ("sun cat red", "red cat sun"),
    ("It costs 3.50 dollars, it's cheap!", "It's cheap: it costs $3.50."),
    ("well-known results (2024) & more", "well known results from 2024 and more"),
    ("use snake_case names", "snake case names are used"),
]
"""Hand-picked pairs: identical, paraphrased, empty, reordered, numbers and punctuation (13a's rules)."""


def reference_scores(pairs: List[Tuple[str, str]]) -> dict:
    """The same scores from the reference implementations (mean F-measure per ROUGE type; corpus BLEU / 100)."""
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    scored = [scorer.score(reference, generation) for generation, reference in pairs]
    found = {key: sum(s[key].fmeasure for s in scored) / len(pairs) for key in ("rouge1", "rouge2", "rougeL")}
    found["bleu"] = sacrebleu.corpus_bleu([g for g, _ in pairs], [[r for _, r in pairs]]).score / 100
    return found


def random_pairs(seed: int) -> List[Tuple[str, str]]:
    words = "the a cat dog sat ran on mat , . 3.5 12-b it's \"quoted\" & - (x)".split()
    rng = random.Random(seed)
    return [(" ".join(rng.choices(words, k=rng.randint(0, 14))), " ".join(rng.choices(words, k=rng.randint(1, 14))))
            for _ in range(rng.randint(1, 8))]


@pytest.mark.parametrize("pairs", [PAIRS, *[random_pairs(seed) for seed in range(12)]],
                         ids=["hand-picked", *[f"random-{seed}" for seed in range(12)]])
def test_rouge_and_bleu_equal_rouge_score_and_sacrebleu(pairs: List[Tuple[str, str]]) -> None:
    ours = score_texts([g for g, _ in pairs], [r for _, r in pairs], bleu=True)
    theirs = reference_scores(pairs)
    for key in ("rouge1", "rouge2", "rougeL", "bleu"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-9), key


def test_bleu_of_the_hand_picked_pairs_is_not_trivial() -> None:
    """The pairs exercise smoothing (an n-gram order without matches) and the brevity penalty alike."""
    bleu = sacrebleu.corpus_bleu([g for g, _ in PAIRS], [[r for _, r in PAIRS]])
    assert 0.05 < bleu.score / 100 < 0.9 and bleu.bp < 1.0
    generated, reference = "the cat sat down here", "the cat down sat here"
    single = sacrebleu.corpus_bleu([generated], [[reference]])
    assert single.counts[2] == 0 and single.score > 0, "exp smoothing gives credit without trigram matches"
    assert score_texts([generated], [reference], bleu=True)["bleu"] == pytest.approx(single.score / 100)


def test_exact_match_ignores_only_runs_of_whitespace() -> None:
    scores = score_texts(["sun  cat\nred ", "Sun cat red", "sun cat red."], ["sun cat red"] * 3)
    assert scores["exact_match"] == pytest.approx(1 / 3)
    assert "bleu" not in scores, "BLEU only with data.metric: bleu"


def test_tokens_are_those_of_the_reference_implementations() -> None:
    assert rouge_tokens("It's 3.50 Dollars!") == ["it", "s", "3", "50", "dollars"]
    assert rouge_tokens("Café déjà-vu") == ["café", "déjà", "vu"], "non-ASCII letters are kept (rouge-score drops them)"
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    for text, _ in PAIRS + random_pairs(99):
        assert bleu_tokens(text) == Tokenizer13a()(text).split()


def test_scores_need_one_reference_each() -> None:
    with pytest.raises(ValueError, match="one reference per generation"):
        score_texts(["a"], ["a", "b"])


def test_sample_is_seeded_sorted_and_capped() -> None:
    assert sample(100, 8, seed=3) == sample(100, 8, seed=3) == sorted(sample(100, 8, seed=3))
    assert sample(100, 8, seed=3) != sample(100, 8, seed=4)
    assert sample(5, 8, seed=0) == [0, 1, 2, 3, 4]
    assert sample(5, 0, seed=0) == []


def test_padding_on_either_side() -> None:
    ids, mask = padded([[5, 6, 7], [8]], pad=0, left=True)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = padded([[5, 6, 7], [8]], pad=0, left=False)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.parametrize("kind", ["gpt2", "t5"])
def test_a_batch_generates_what_each_prompt_generates_alone(kind: str, tmp_path: Path) -> None:
    """Left padding (causal) and right padding (encoder-decoder) with attention masks: a prompt's greedy output
    does not depend on the others in its batch."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    build = build_tiny_gpt2 if kind == "gpt2" else build_tiny_t5
    folder = build(tmp_path / kind)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    auto = AutoModelForCausalLM if kind == "gpt2" else AutoModelForSeq2SeqLM
    model = auto.from_pretrained(folder)
    model.train()
    prompts = [tokenizer(text)["input_ids"] for text in ("reverse: red cat", "the", "reverse: sun moon tree river")]
    together = generate_texts(model, tokenizer, prompts, 6, batch_size=3, encoder_decoder=kind == "t5")
    alone = [generate_texts(model, tokenizer, [p], 6, batch_size=1, encoder_decoder=kind == "t5")[0]
             for p in prompts]
    assert together == alone and all(together), together
    assert model.training, "the model goes back to the mode it was in"
    assert torch.is_grad_enabled()
