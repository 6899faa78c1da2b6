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
    each task (language-model streams that name one), else None; ``general_bpb``: the same
    text's bits per byte. ``higher``: (T,) bool, whether each task's primary score (its column of
    ``R``) is higher-is-better (None: every one is, as accuracies are); ``columns``: the tasks a
    metric covers (None: all; the summary's per-kind metrics of a stream that mixes kinds of task,
    whose other columns are NaN)."""

    R: np.ndarray
    b: np.ndarray | None = None
    R_ref: np.ndarray | None = None
    fwt_undefined: str | None = None
    general: np.ndarray | None = None
    general_bpb: np.ndarray | None = None
    higher: np.ndarray | None = None
    columns: tuple[int, ...] | None = None

    @property
    def T(self) -> int:
        return self.R.shape[0]


# Every metric below takes the direction of each task's score (``higher``: None, or a (T,) bool
# array) and the tasks it covers (``columns``: None for all). Differences are signed by the
# direction, s_j = +1 where higher is better and −1 where lower is: BWT and FWT are positive when
# a task got better, forgetting and intransigence positive when it got worse, each in the task's
# own unit (accuracy, perplexity, bits per byte). ACC, AIA and plasticity are means of scores, in
# their unit (for perplexities, lower is better).


def _sign(higher: np.ndarray | None, T: int) -> np.ndarray:
    return np.ones(T) if higher is None else np.where(np.asarray(higher, dtype=bool), 1.0, -1.0)


def _cols(T: int, columns) -> list[int]:
    return list(range(T)) if columns is None else sorted(int(c) for c in columns)


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def acc(R: np.ndarray, columns=None) -> float:
    """ACC = (1/T) Σ_j R[T, j]: mean final accuracy (Lopez-Paz & Ranzato 2017); the mean final
    score in the tasks' unit."""
    return _mean([R[-1, j] for j in _cols(R.shape[0], columns)])


def average_incremental_accuracy(R: np.ndarray, columns=None) -> float:
    """(1/T) Σ_k (1/k) Σ_{j≤k} R[k, j] (Rebuffi et al. 2017); over ``columns``, the rows after
    a task of them was learned."""
    cols = _cols(R.shape[0], columns)
    return _mean([np.mean([R[k, j] for j in cols if j <= k]) for k in range(R.shape[0]) if any(j <= k for j in cols)])


def bwt(R: np.ndarray, higher=None, columns=None) -> float:
    """BWT = 1/(T-1) Σ_{j<T} s_j (R[T, j] − R[j, j]) (Lopez-Paz & Ranzato 2017); NaN when T = 1."""
    T = R.shape[0]
    s = _sign(higher, T)
    return _mean([s[j] * (R[-1, j] - R[j, j]) for j in _cols(T, columns) if j < T - 1])


def bwt_over_t(R: np.ndarray, higher=None, columns=None) -> float:
    """The variant that divides the same sum by T (some codebases do)."""
    T = R.shape[0]
    s, cols = _sign(higher, T), _cols(T, columns)
    return float(sum(s[j] * (R[-1, j] - R[j, j]) for j in cols if j < T - 1) / len(cols)) if cols else float("nan")


def fwt(R: np.ndarray, b: np.ndarray, higher=None, columns=None) -> float:
    """FWT = 1/(T-1) Σ_{j≥2} s_j (R[j-1, j] − b̄_j) (Lopez-Paz & Ranzato 2017); NaN when T = 1."""
    T = R.shape[0]
    s = _sign(higher, T)
    return _mean([s[j] * (R[j - 1, j] - b[j]) for j in _cols(T, columns) if j >= 1])


def fwt_over_t(R: np.ndarray, b: np.ndarray, higher=None, columns=None) -> float:
    """The FWT sum divided by T instead of T-1, as the GEM code does; NaN when T = 1."""
    T = R.shape[0]
    s, cols = _sign(higher, T), _cols(T, columns)
    if T < 2 or not cols:
        return float("nan")
    return float(sum(s[j] * (R[j - 1, j] - b[j]) for j in cols if j >= 1) / len(cols))


def forgetting_terms(R: np.ndarray, higher=None, columns=None) -> np.ndarray:
    """Each task's forgetting f_j = max_{l<T} s_j R[l, j] − s_j R[T, j] for j < T (Chaudhry et al.
    2018, "Riemannian Walk", f_j^k = max_{l∈{1..k−1}} a_{l,j} − a_{k,j}): the best score the task
    had before the end less its final one (for a perplexity, the final less the lowest). The max
    runs over every row before the last, those before task j was learned included; the accuracy
    before any training (b) is not a row of R. This is A-GEM's code (facebookresearch/agem,
    ``utils/utils.py``, ``compute_fgt``: ``np.max(data[:T, i]) - data[T, i]`` on the matrix of
    evaluations after each task, which has no row for the untrained model). One term per task of
    ``columns`` (default: all) but the last, in task order."""
    T = R.shape[0]
    s = _sign(higher, T)
    return np.array([(s[j] * R[: T - 1, j]).max() - s[j] * R[-1, j] for j in _cols(T, columns) if j < T - 1], dtype=float)


def forgetting(R: np.ndarray, higher=None, columns=None) -> float:
    """F = 1/(T-1) Σ_{j<T} (max_{l<T} s_j R[l, j] − s_j R[T, j]) (Chaudhry et al. 2018, as A-GEM's
    code computes it: :func:`forgetting_terms`); NaN when T = 1."""
    return _mean(list(forgetting_terms(R, higher, columns)))


def forgetting_since_learned(R: np.ndarray, higher=None, columns=None) -> float:
    """The variant whose max runs over the rows from task j's own on, j ≤ l < T: a score a task
    had before it was learned (zero-shot, or transferred from earlier tasks) does not count as
    knowledge to forget. clbench's ``forgetting`` until results format 3. Never larger than
    :func:`forgetting`; NaN when T = 1."""
    T = R.shape[0]
    s = _sign(higher, T)
    return _mean([(s[j] * R[j : T - 1, j]).max() - s[j] * R[-1, j] for j in _cols(T, columns) if j < T - 1])


def forgetting_last(R: np.ndarray, higher=None, columns=None) -> float:
    """Avalanche's forgetting: 1/(T-1) Σ_{j<T} s_j (R[j, j] − R[T, j]) (first-minus-last)."""
    T = R.shape[0]
    s = _sign(higher, T)
    return _mean([s[j] * (R[j, j] - R[-1, j]) for j in _cols(T, columns) if j < T - 1])


def intransigence(R: np.ndarray, R_ref: np.ndarray | None, higher=None, columns=None) -> float:
    """Mean over k of I_k = s_k (R*[k, k] − R[k, k]) (Chaudhry et al. 2018), R* = ``cumulative``'s."""
    if R_ref is None or R_ref.shape != R.shape:
        return float("nan")
    s = _sign(higher, R.shape[0])
    return _mean([s[k] * (R_ref[k, k] - R[k, k]) for k in _cols(R.shape[0], columns)])


def intransigence_last(R: np.ndarray, R_ref: np.ndarray | None, higher=None, columns=None) -> float:
    """I_T = s_T (R*[T, T] − R[T, T]), the last task's intransigence (Chaudhry et al. 2018); over
    ``columns``, the last of them."""
    cols = _cols(R.shape[0], columns)
    if R_ref is None or R_ref.shape != R.shape or not cols:
        return float("nan")
    k = cols[-1]
    return float(_sign(higher, R.shape[0])[k] * (R_ref[k, k] - R[k, k]))


def _fwt(m: Matrices) -> float:
    return float("nan") if m.b is None or m.fwt_undefined else fwt(m.R, m.b, m.higher, m.columns)


def plasticity(R: np.ndarray, columns=None) -> float:
    """Learning accuracy: (1/T) Σ_k R[k, k], accuracy on each task right after learning it."""
    return _mean([R[k, k] for k in _cols(R.shape[0], columns)])


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
    "acc": (lambda m: acc(m.R, m.columns), "mean final accuracy"),
    "aia": (lambda m: average_incremental_accuracy(m.R, m.columns), "average incremental accuracy"),
    "bwt": (lambda m: bwt(m.R, m.higher, m.columns), "backward transfer"),
    "fwt": (_fwt, "forward transfer (NaN where undefined: class-incremental streams, joint)"),
    "forgetting": (lambda m: forgetting(m.R, m.higher, m.columns),
                   "max-based forgetting over every earlier row (Chaudhry et al. 2018, A-GEM's code)"),
    "forgetting_since_learned": (lambda m: forgetting_since_learned(m.R, m.higher, m.columns),
                                 "max-based forgetting over the rows after each task was learned"),
    "intransigence": (lambda m: intransigence(m.R, m.R_ref, m.higher, m.columns), "against cumulative, same seed"),
    "intransigence_last": (lambda m: intransigence_last(m.R, m.R_ref, m.higher, m.columns), "the last task's intransigence"),
    "plasticity": (lambda m: plasticity(m.R, m.columns), "accuracy right after learning each task"),
    "general_ppl_change": (lambda m: general_ppl_change(m.general), "relative change of the general text's perplexity"),
    "general_bpb_change": (lambda m: general_bpb_change(m.general_bpb), "change of the general text's bits per byte"),
}


#: The built-in metrics of the accuracy matrix: the summary computes them for each kind of task
#: apart (``acc@corpus``, ...) where a stream mixes kinds (whose scores have different units).
PER_KIND: tuple[str, ...] = ("acc", "aia", "bwt", "fwt", "forgetting", "forgetting_since_learned", "intransigence",
                             "intransigence_last", "plasticity")


@hookimpl
def register_metrics(register):
    for name, (fn, description) in BUILTIN.items():
        register(name, fn, description=description)
