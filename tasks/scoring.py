"""Scores of generated answers, by name: a task's ``metric`` is one of :data:`SCORERS`, or
``accuracy`` (rank classification: the label whose text the model finds likeliest after the
prompt, computed by the generation kind from likelihoods, not from generated text).

Each scorer takes the generated texts and the references and returns the mean score in [0, 1].
"""

from __future__ import annotations

import re
import string
from typing import Callable, Sequence

from clbench.errors import UserError


def normalize_answer(s: str) -> str:
    """Lower case, no punctuation, no articles (a, an, the), single spaces: the normalisation of
    SQuAD's evaluation script, which O-LoRA's ``compute_metrics.py`` (after Super-NaturalInstructions)
    applies before exact match."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """The share of answers equal to their reference after :func:`normalize_answer`."""
    if not references:
        return float("nan")
    return sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references)) / len(references)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (Lin 2004) of each answer against its reference, by the
    ``rouge-score`` package (Google Research's implementation)."""
    from rouge_score import rouge_scorer

    if not references:
        return float("nan")
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    return sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)) / len(references)


Scorer = Callable[[Sequence[str], Sequence[str]], float]

#: Scores of generated text, by metric name.
SCORERS: dict[str, Scorer] = {"exact_match": exact_match, "rouge_l": rouge_l}
#: Every metric a task may name: the scorers, and ``accuracy`` by ranking the task's labels.
METRICS: tuple[str, ...] = (*SCORERS, "accuracy")


def check_metric(name: str, where: str) -> None:
    """A one-line :class:`UserError` unless ``name`` is a metric a task may have."""
    if name not in METRICS:
        raise UserError(f"{where}: unknown metric {name!r} (known: {', '.join(METRICS)})")
