"""How generated text scores against its reference: ROUGE-1/2/L, exact match and BLEU, in pure Python.

Written here rather than taken from a library so the numbers are the standard ones with no download and no extra
dependency: torchmetrics' ROUGE needs nltk, and its BLEU scores 0 whenever one n-gram order has no match, where
sacreBLEU smooths. The tests check every number against the reference implementations (``rouge-score``,
``sacrebleu``):

- **ROUGE-N / ROUGE-L** are ``rouge-score``'s F-measures without stemming, averaged over the pairs. Text is
  lower-cased and split into runs of letters and digits, as ``rouge-score`` does, except that non-ASCII letters
  count as letters (``rouge-score`` drops them, which scores any text outside English 0).
- **BLEU** is sacreBLEU's corpus BLEU with its defaults (``13a`` tokenisation, exponential smoothing, 4-grams,
  one reference per example), as a share in [0, 1] (sacreBLEU prints it x100).
- **Exact match** compares the texts after collapsing runs of whitespace (case and punctuation count).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Dict, List, Sequence, Tuple

WORD = re.compile(r"[^\W_]+")
"""A ROUGE token: a run of letters and digits."""

BLEU_ORDER = 4

_BLEU_13A = (
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),  # punctuation and symbols
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),  # a period or comma not after a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),  # a period or comma not before a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # a dash after a digit
)
"""mteval-v13a's tokenisation, as sacreBLEU's ``13a`` applies it."""


def score_texts(generations: Sequence[str], references: Sequence[str], bleu: bool = False) -> Dict[str, float]:
    """``rouge1``, ``rouge2``, ``rougeL`` (mean F-measures), ``exact_match`` (share) and, with ``bleu``, ``bleu``
    (corpus BLEU in [0, 1]) of generated texts against one reference each.

    Raises:
        ValueError: the two lists differ in length or are empty.
    """
    if len(generations) != len(references) or not generations:
        raise ValueError(f"score_texts needs one reference per generation, at least one, got {len(generations)} "
                         f"generations and {len(references)} references")
    pairs = [(rouge_tokens(g), rouge_tokens(r)) for g, r in zip(generations, references, strict=True)]
    scores = {
        "rouge1": _mean([rouge_n(g, r, 1) for g, r in pairs]),
        "rouge2": _mean([rouge_n(g, r, 2) for g, r in pairs]),
        "rougeL": _mean([rouge_l(g, r) for g, r in pairs]),
        "exact_match": _mean([float(_squash(g) == _squash(r)) for g, r in zip(generations, references, strict=True)]),
    }
    if bleu:
        scores["bleu"] = corpus_bleu(generations, references)
    return scores


def rouge_tokens(text: str) -> List[str]:
    """What ROUGE compares: the lower-cased runs of letters and digits."""
    return WORD.findall(text.lower())


def rouge_n(generated: Sequence[str], reference: Sequence[str], n: int) -> float:
    """ROUGE-N F-measure of two token lists: n-gram overlap (clipped counts) over each side's n-grams."""
    ours, theirs = _ngrams(generated, n), _ngrams(reference, n)
    overlap = sum((ours & theirs).values())
    return _f_measure(overlap / max(sum(ours.values()), 1), overlap / max(sum(theirs.values()), 1))


def rouge_l(generated: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F-measure: the longest common subsequence over each side's length (0 when either is empty)."""
    if not generated or not reference:
        return 0.0
    lcs = _lcs_length(generated, reference)
    return _f_measure(lcs / len(generated), lcs / len(reference))


def corpus_bleu(generations: Sequence[str], references: Sequence[str]) -> float:
    """sacreBLEU's corpus BLEU (13a, exponential smoothing), divided by 100."""
    correct, total = [0] * BLEU_ORDER, [0] * BLEU_ORDER
    generated_length = reference_length = 0
    for generation, reference in zip(generations, references, strict=True):
        ours, theirs = bleu_tokens(generation), bleu_tokens(reference)
        generated_length += len(ours)
        reference_length += len(theirs)
        for n in range(1, BLEU_ORDER + 1):
            counts = _ngrams(ours, n)
            correct[n - 1] += sum((counts & _ngrams(theirs, n)).values())
            total[n - 1] += sum(counts.values())
    return _bleu(correct, total, generated_length, reference_length)


def bleu_tokens(text: str) -> List[str]:
    """mteval-v13a's tokens of a line (sacreBLEU's default tokenizer)."""
    line = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for pattern, replacement in _BLEU_13A:
        line = pattern.sub(replacement, line)
    return line.split()


def _bleu(correct: Sequence[int], total: Sequence[int], generated_length: int, reference_length: int) -> float:
    precisions = [0.0] * BLEU_ORDER
    if not any(correct):
        return 0.0  # no n-gram matches at all: sacreBLEU does not smooth that
    smooth = 1.0
    for n in range(BLEU_ORDER):
        if total[n] == 0:
            break  # no n-grams of this order at all: the geometric mean sees log(0) below
        if correct[n] == 0:
            smooth *= 2  # sacreBLEU's "exp" smoothing: 1 / 2^k for the k-th order without a match
            precisions[n] = 1.0 / (smooth * total[n])
        else:
            precisions[n] = correct[n] / total[n]
    if min(precisions) <= 0.0:
        return 0.0
    brevity = 1.0 if generated_length >= reference_length else math.exp(1 - reference_length / generated_length)
    return brevity * math.exp(sum(math.log(p) for p in precisions) / BLEU_ORDER)


def _ngrams(tokens: Sequence[str], n: int) -> Counter[Tuple[str, ...]]:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if token == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _f_measure(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _squash(text: str) -> str:
    return " ".join(text.split())


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)
