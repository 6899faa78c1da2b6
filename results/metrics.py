"""Continual-learning metrics as pure functions of the accuracy matrix.

``R[i, j]`` is the accuracy on task j after training task i (0-based here; T tasks), ``b[j]``
the accuracy on task j before any training, and ``R_ref`` the accuracy matrix of the
``cumulative`` run with the same stream, order, seed, model and training config.

Libraries disagree on some of these; the variants are here under their own names so a report
can say which it uses (see docs/results.md):

* ``forgetting`` is max-based over every earlier row (Chaudhry et al. 2018, A-GEM's code);
  ``forgetting_since_learned`` takes the max only over the rows after the task was learned;
  ``forgetting_last`` is Avalanche's "accuracy just after learning minus final accuracy".
* ``bwt`` divides by T-1 (Lopez-Paz & Ranzato 2017); ``bwt_over_t`` divides by T. ``fwt`` divides
  by T-1; ``fwt_over_t`` divides the same sum by T, as the GEM code does.
* ``intransigence`` is the mean of I_k over the tasks; ``intransigence_last`` is I_T, the last
  task's (Chaudhry et al. 2018 report it at the end of the stream).

Where a metric is undefined for a cell, the summary says so: ``Matrices.fwt_undefined`` holds the
reason (class-incremental streams, ``joint``; see clbench.results.summary.fwt_undefined) and
the FWT metrics are NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clbench import hookimpl


@dataclass
class Matrices:
    """A cell's accuracy matrices. ``R``: (T, T); ``b``: (T,); ``R_ref``: (T, T) or None.
    ``fwt_undefined``: why forward transfer means nothing for this cell (None: it is defined).
    ``general``: (T + 1,) the perplexity of the stream's general text before training and after
    each task (generative streams), else None; ``general_bpb``: the same text's bits per byte."""

    R: np.ndarray
    b: np.ndarray | None = None
    R_ref: np.ndarray | None = None
    fwt_undefined: str | None = None
    general: np.ndarray | None = None
    general_bpb: np.ndarray | None = None

    @property
    def T(self) -> int:
        return self.R.shape[0]


def acc(R: np.ndarray) -> float:
    """ACC = (1/T) Σ_j R[T, j]: mean final accuracy (Lopez-Paz & Ranzato 2017)."""
    return float(np.mean(R[-1]))


def average_incremental_accuracy(R: np.ndarray) -> float:
    """(1/T) Σ_k (1/k) Σ_{j≤k} R[k, j] (Rebuffi et al. 2017)."""
    T = R.shape[0]
    return float(np.mean([np.mean(R[k, : k + 1]) for k in range(T)]))


def bwt(R: np.ndarray) -> float:
    """BWT = 1/(T-1) Σ_{j<T} (R[T, j] − R[j, j]) (Lopez-Paz & Ranzato 2017); NaN when T = 1."""
    T = R.shape[0]
    if T < 2:
        return float("nan")
    return float(np.mean([R[-1, j] - R[j, j] for j in range(T - 1)]))


def bwt_over_t(R: np.ndarray) -> float:
    """The variant that divides the same sum by T (some codebases do)."""
    T = R.shape[0]
    return float(sum(R[-1, j] - R[j, j] for j in range(T - 1)) / T)


def fwt(R: np.ndarray, b: np.ndarray) -> float:
    """FWT = 1/(T-1) Σ_{j≥2} (R[j-1, j] − b̄_j) (Lopez-Paz & Ranzato 2017); NaN when T = 1."""
    T = R.shape[0]
    if T < 2:
        return float("nan")
    return float(np.mean([R[j - 1, j] - b[j] for j in range(1, T)]))


def fwt_over_t(R: np.ndarray, b: np.ndarray) -> float:
    """The FWT sum divided by T instead of T-1, as the GEM code does; NaN when T = 1."""
    T = R.shape[0]
    if T < 2:
        return float("nan")
    return float(sum(R[j - 1, j] - b[j] for j in range(1, T)) / T)


def forgetting_terms(R: np.ndarray) -> np.ndarray:
    """Each task's forgetting f_j = max_{l<T} R[l, j] − R[T, j] for j < T (Chaudhry et al. 2018,
    "Riemannian Walk", f_j^k = max_{l∈{1..k−1}} a_{l,j} − a_{k,j}): the max runs over every row
    before the last, those before task j was learned included; the accuracy before any training
    (b) is not a row of R. This is A-GEM's code (facebookresearch/agem, ``utils/utils.py``,
    ``compute_fgt``: ``np.max(data[:T, i]) - data[T, i]`` on the matrix of evaluations after each
    task, which has no row for the untrained model). Shape ``(T-1,)``."""
    T = R.shape[0]
    return np.array([R[: T - 1, j].max() - R[-1, j] for j in range(T - 1)], dtype=float)


def forgetting(R: np.ndarray) -> float:
    """F = 1/(T-1) Σ_{j<T} (max_{l<T} R[l, j] − R[T, j]) (Chaudhry et al. 2018, as A-GEM's code
    computes it: :func:`forgetting_terms`); NaN when T = 1."""
    if R.shape[0] < 2:
        return float("nan")
    return float(np.mean(forgetting_terms(R)))


def forgetting_since_learned(R: np.ndarray) -> float:
    """The variant whose max runs over the rows from task j's own on, j ≤ l < T: accuracy a task
    had before it was learned (zero-shot, or transferred from earlier tasks) does not count as
    knowledge to forget. clbench's ``forgetting`` until results format 3. Never larger than
    :func:`forgetting`; NaN when T = 1."""
    T = R.shape[0]
    if T < 2:
        return float("nan")
    return float(np.mean([R[j : T - 1, j].max() - R[-1, j] for j in range(T - 1)]))


def forgetting_last(R: np.ndarray) -> float:
    """Avalanche's forgetting: 1/(T-1) Σ_{j<T} (R[j, j] − R[T, j]) (first-minus-last)."""
    T = R.shape[0]
    if T < 2:
        return float("nan")
    return float(np.mean([R[j, j] - R[-1, j] for j in range(T - 1)]))


def intransigence(R: np.ndarray, R_ref: np.ndarray | None) -> float:
    """Mean over k of I_k = R*[k, k] − R[k, k] (Chaudhry et al. 2018), R* = ``cumulative``'s."""
    if R_ref is None or R_ref.shape != R.shape:
        return float("nan")
    return float(np.mean(np.diag(R_ref) - np.diag(R)))


def intransigence_last(R: np.ndarray, R_ref: np.ndarray | None) -> float:
    """I_T = R*[T, T] − R[T, T], the last task's intransigence (Chaudhry et al. 2018)."""
    if R_ref is None or R_ref.shape != R.shape:
        return float("nan")
    return float(R_ref[-1, -1] - R[-1, -1])


def _fwt(m: Matrices) -> float:
    return float("nan") if m.b is None or m.fwt_undefined else fwt(m.R, m.b)


def plasticity(R: np.ndarray) -> float:
    """Learning accuracy: (1/T) Σ_k R[k, k], accuracy on each task right after learning it."""
    return float(np.mean(np.diag(R)))


def general_ppl_change(general: np.ndarray | None) -> float:
    """(ppl_T − ppl_0) / ppl_0: the relative change of the general text's perplexity from before
    training to after the last task (TRACE's loss of general ability, Wang et al. 2023, as a
    perplexity); NaN without a general text."""
    if general is None or len(general) < 2 or not np.isfinite(general[0]):
        return float("nan")
    return float((general[-1] - general[0]) / general[0])


def general_bpb_change(bpb: np.ndarray | None) -> float:
    """bpb_T − bpb_0: the change of the general text's bits per byte (the summed negative
    log-likelihood in bits over the UTF-8 bytes of the scored text) from before training to after
    the last task, in bits per byte: unlike a perplexity per token, comparable between models
    with different tokenizers. NaN without a general text."""
    if bpb is None or len(bpb) < 2 or not np.isfinite(bpb[0]):
        return float("nan")
    return float(bpb[-1] - bpb[0])


#: name -> (function of Matrices, description); the built-in metrics plugin registers these.
BUILTIN = {
    "acc": (lambda m: acc(m.R), "mean final accuracy"),
    "aia": (lambda m: average_incremental_accuracy(m.R), "average incremental accuracy"),
    "bwt": (lambda m: bwt(m.R), "backward transfer"),
    "fwt": (_fwt, "forward transfer (NaN where undefined: class-incremental streams, joint)"),
    "forgetting": (lambda m: forgetting(m.R), "max-based forgetting over every earlier row (Chaudhry et al. 2018, A-GEM's code)"),
    "forgetting_since_learned": (lambda m: forgetting_since_learned(m.R),
                                 "max-based forgetting over the rows after each task was learned"),
    "intransigence": (lambda m: intransigence(m.R, m.R_ref), "against cumulative, same seed"),
    "intransigence_last": (lambda m: intransigence_last(m.R, m.R_ref), "the last task's intransigence"),
    "plasticity": (lambda m: plasticity(m.R), "accuracy right after learning each task"),
    "general_ppl_change": (lambda m: general_ppl_change(m.general), "relative change of the general text's perplexity"),
    "general_bpb_change": (lambda m: general_bpb_change(m.general_bpb), "change of the general text's bits per byte"),
}


@hookimpl
def register_metrics(register):
    for name, (fn, description) in BUILTIN.items():
        register(name, fn, description=description)
