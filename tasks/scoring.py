"""Scores of generated answers, by name: a task's ``metric`` is one of :data:`SCORERS`, or
``accuracy`` (rank classification: the label whose text the model finds likeliest after the
prompt, computed by the generation kind from likelihoods, not from generated text).

Each scorer takes the generated texts and the references and returns the mean score in [0, 1].
Each follows the source that reports it (docs/llm.md, "Metrics"):

* ``exact_match``, ``rouge_l``: Super-NaturalInstructions' ``compute_metrics.py``, which O-LoRA
  (Wang et al. 2023) copies;
* ``trace_rouge_l``, ``choice_accuracy``, ``strict_match``, ``edit_similarity``: TRACE's (Wang et
  al. 2023) ``metrics.py`` and ``evaluations/eval_*.py``, case by case as TRACE computes them (a
  TRACE task is never scored by a more lenient rule under TRACE's name).
"""

from __future__ import annotations

import difflib
import re
import string
from typing import Callable, Sequence

from clbench.errors import UserError


def normalize_answer(s: str) -> str:
    """Lower case, no punctuation, single spaces: SQuAD's normalisation without removing the
    articles, as Super-NaturalInstructions' ``compute_metrics.py`` (which O-LoRA copies) applies
    it before exact match."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    return " ".join(s.split())


def _mean(scores, references: Sequence[str]) -> float:
    return sum(scores) / len(references) if references else float("nan")


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """The share of answers equal to their reference after :func:`normalize_answer`."""
    return _mean((normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references)), references)


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (Lin 2004) of each answer against its reference, by the
    ``rouge-score`` package (Google Research's implementation) with Porter stemming, as
    Super-NaturalInstructions' ``compute_metrics.py`` configures it."""
    from rouge_score import rouge_scorer  # here: it imports nltk, which takes seconds

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return _mean((scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)), references)


def trace_rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """TRACE's ROUGE-L for MeetingBank (``eval_MeetingBank.py``, ``metrics.caculate_rouge`` and
    ``score_rouge``): the ``rouge`` package's (1.0.1) ``Rouge(metrics=["rouge-l"])
    .get_scores(reference, prediction, avg=True)["rouge-l"]["f"]`` for each pair (TRACE passes the
    reference first), its mean over every pair. That package splits sentences at ``.``, splits
    words at whitespace only (case and punctuation stay on the words) and takes the union LCS over
    sentences (Lin 2004's summary-level ROUGE-L). A pair whose prediction or reference is empty
    scores 0 (TRACE skips it and keeps it in the denominator); a text the package cannot score
    (only full stops: "Collections must contain at least 1 sentence", where TRACE's script would
    stop) scores 0 too."""
    from rouge import Rouge

    scorer = Rouge(metrics=["rouge-l"])

    def one(p: str, r: str) -> float:
        if p == "" or r == "":
            return 0.0
        try:
            return float(scorer.get_scores(r, p, avg=True)["rouge-l"]["f"])
        except ValueError:
            return 0.0

    return _mean((one(p, r) for p, r in zip(predictions, references)), references)


def _strict(p: str, r: str) -> bool:
    """TRACE's ``caculate_accuracy``: equal strings, and an empty one is never right."""
    return p != "" and r != "" and p == r


def choice_accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """TRACE's accuracy for ScienceQA (``eval_ScienceQA.py``: ``resolve`` keeps ``datium[0]``):
    the first character of the answer (the option's letter, ``A``) against the reference's,
    nothing stripped or lower-cased. Only ScienceQA is scored so by TRACE: its C-STANCE and FOMC
    compare whole strings (:func:`strict_match`)."""
    return _mean((_strict(p[:1], r[:1]) for p, r in zip(predictions, references)), references)


def strict_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """TRACE's accuracy for C-STANCE, FOMC, NumGLUE-cm and NumGLUE-ds (``eval_CStance.py``,
    ``eval_FOMC.py``, ``eval_NumGLUE_*.py``: ``metrics.caculate_accuracy`` on the whole texts):
    the whole answer equals the reference, with no normalisation at all (``A.`` against ``A`` is
    wrong)."""
    return _mean((_strict(p, r) for p, r in zip(predictions, references)), references)


_LITERAL = re.compile(r"<(STR|NUM|CHAR)_LIT:(.*?)>", re.S)


def py150_postprocess(code: str) -> str:
    """TRACE's ``eval_Py150.py``: Py150's literal placeholders back to code (``<NUM_LIT>`` to
    ``0``, ``<STR_LIT>`` and ``<CHAR_LIT>`` to nothing, ``<NUM_LIT:2>`` to ``2``)."""
    code = code.replace("<NUM_LIT>", "0").replace("<STR_LIT>", "").replace("<CHAR_LIT>", "")
    for kind, value in _LITERAL.findall(code):
        code = code.replace(f"<{kind}_LIT:{value}>", value)
    return code


def fuzz_ratio(a: str, b: str) -> int:
    """``fuzzywuzzy.fuzz.ratio(a, b)`` as TRACE computes it (its requirements install fuzzywuzzy
    without python-Levenshtein, so fuzzywuzzy falls back to the standard library's
    ``difflib.SequenceMatcher``): 100 for equal strings, 0 when one is empty, else
    ``round(100 * SequenceMatcher(None, a, b).ratio())``."""
    if a == b:
        return 100
    if not a or not b:
        return 0
    return int(round(100 * difflib.SequenceMatcher(None, a, b).ratio()))


def edit_similarity(predictions: Sequence[str], references: Sequence[str]) -> float:
    """TRACE's "similarity" for Py150 (``eval_Py150.py``, ``metrics.caculate_fuzz``): the mean of
    :func:`fuzz_ratio` of each answer against its reference after :func:`py150_postprocess`
    (text without Py150's placeholders is unchanged), divided by 100. A pair whose prediction or
    reference is empty after post-processing scores 0, as ``caculate_fuzz`` skips it and keeps it
    in the denominator (an empty answer to a line that was only a string literal is not a
    perfect answer, although ``fuzz.ratio("", "")`` is 100)."""
    pairs = ((py150_postprocess(p), py150_postprocess(r)) for p, r in zip(predictions, references))
    return _mean((fuzz_ratio(p, r) / 100 if p and r else 0.0 for p, r in pairs), references)


Scorer = Callable[[Sequence[str], Sequence[str]], float]

#: Scores of generated text, by metric name.
SCORERS: dict[str, Scorer] = {
    "exact_match": exact_match,
    "rouge_l": rouge_l,
    "trace_rouge_l": trace_rouge_l,
    "choice_accuracy": choice_accuracy,
    "strict_match": strict_match,
    "edit_similarity": edit_similarity,
}
#: Every metric a task may name: the scorers, and ``accuracy`` by ranking the task's labels.
METRICS: tuple[str, ...] = (*SCORERS, "accuracy")
#: Metrics a source reports that clbench cannot compute here, and why.
UNAVAILABLE: dict[str, str] = {
    "sari": "SARI (Xu et al. 2016) needs a maintained implementation (Hugging Face evaluate's "
            "'sari', with sacrebleu's tokenizer), which is not installed",
}


def check_metric(name: str, where: str) -> None:
    """A one-line :class:`UserError` unless ``name`` is a metric a task may have."""
    if name in UNAVAILABLE:
        raise UserError(f"{where}: metric {name!r} is not available: {UNAVAILABLE[name]}")
    if name not in METRICS:
        raise UserError(f"{where}: unknown metric {name!r} (known: {', '.join(METRICS)})")
