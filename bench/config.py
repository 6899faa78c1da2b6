"""The configuration of a suite and its cells, as values: no file is read or written here
(:mod:`clbench.suite` reads and writes suite files).

* :class:`TrainingConfig`: a suite's ``[training]`` table;
* :class:`StrategySpec`: one ``[[strategies]]`` column (a label and the strategies it combines);
* :class:`CellConfig`: one cell of a suite, everything that determines its results, and its
  config hash;
* :class:`Suite`: a suite's cells;
* :data:`FIELD_RANGES` and :func:`dataclass_from`: how a TOML table becomes a checked
  :class:`ModelConfig` or :class:`TrainingConfig`.
"""

from __future__ import annotations

import hashlib
import json
import math
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from .errors import UserError
from .models.transformer import ModelConfig
from .params import type_name, type_ok

#: Bumped when a change makes earlier results incomparable (it is part of every config hash).
#: 2: training.threads fixes a cell's CPU thread count. 3: generative tasks: TRACE's tasks scored as
#: TRACE's scripts score them, rank classification's acc_norm, a default general text with its
#: bits per byte. 4: one evaluation pass per test example (a generated answer stops at max_len
#: after its own prompt), bf16 evaluations, replay's memory matched to each batch's lengths
#: (docs/results.md, "Results formats").
RESULTS_FORMAT = 4


@dataclass
class TrainingConfig:
    """A suite's ``[training]`` table (a strategy's own ``training`` table changes it)."""

    epochs: int = 3  # passes over each task's training data
    batch_size: int = 32  # examples per optimizer step
    lr: float = 1e-3  # learning rate
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"  # rebuilt at the start of every task
    weight_decay: float = 0.0
    momentum: float = 0.0  # for sgd
    grad_clip: float = 1.0  # max gradient norm (keeps class-incremental heads from collapsing the features); 0 disables
    batching: Literal["random", "length"] = "random"  # "length": batches from length-sorted windows (less padding)
    length_window: int = 16  # batching = "length": batches per length-sorted window
    eval_batch_size: int = 256  # examples per evaluation forward pass
    device: str = "auto"  # "auto" (cuda when available), "cpu", "cuda", "cuda:1", ...
    threads: int = 1  # torch intra-op threads of a cell on a CPU (sums run in another order with another count)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # "bf16", "fp16": forward passes under autocast (fp16 with a grad scaler)
    schedule: Literal["constant", "cosine", "rewarm"] = "constant"  # the learning rate over the steps (clbench.schedule): cosine over the stream; rewarm: warm-up and cosine decay per task
    warmup: float = 0.01  # cosine, rewarm: linear warm-up over this fraction of the steps (of the stream; of each task)
    decay_to: float = 0.1  # cosine, rewarm: the cosine decay ends at this fraction of lr


@dataclass(frozen=True)
class StrategySpec:
    """One strategy column of a suite: a label and the (name, params) pairs it combines."""

    label: str
    parts: tuple[tuple[str, dict], ...]

    def to_json(self) -> list:
        return [[name, params] for name, params in self.parts]


@dataclass
class CellConfig:
    """One cell of a suite: everything that determines its results (what cell hooks get as
    ``config``; the running cell is :class:`clbench.cell.CellContext`)."""

    suite: str
    stream: str
    stream_params: dict[str, Any]
    order: str  # a label: "default", a named order, or "2-0-1-..."
    order_value: Any  # what the stream factory gets as ``order`` (None for default)
    strategy: StrategySpec
    seed: int
    model: ModelConfig
    training: TrainingConfig
    init_digest: str = ""  # a hash of the initial weights when model.init is a backbone
    tasks: tuple[int, ...] | None = None  # the positions of the (ordered) stream's tasks the cell runs on; None: all
    published: str = ""  # the registry entry of published results its suite names (not hashed: reports only)

    def config(self) -> dict[str, Any]:
        model = asdict(self.model)
        for key in _LATER_MODEL_FIELDS:  # at their defaults, left out: earlier results keep their hashes
            if model[key] == getattr(_DEFAULT_MODEL, key):
                del model[key]
        if self.init_digest:
            model["init_digest"] = self.init_digest
        out = {
            "format": RESULTS_FORMAT,
            "stream": self.stream,
            "stream_params": self.stream_params,
            "order": self.order_value,
            "strategy": self.strategy.to_json(),
            "seed": self.seed,
            "model": model,
            "training": {k: v for k, v in asdict(self.training).items() if k not in ("device", "eval_batch_size")
                         and not (k in _LATER_TRAINING_FIELDS and v == getattr(_DEFAULT_TRAINING, k))},
        }
        if self.tasks is not None:  # only when set: other cells keep their hashes
            out["tasks"] = list(self.tasks)
        return out

    @property
    def config_hash(self) -> str:
        blob = json.dumps(self.config(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def run_id(self) -> str:
        return self.config_hash

    def describe(self) -> str:
        return f"{self.stream}[{self.order}] · {self.strategy.label} · seed {self.seed}"


@dataclass
class Suite:
    """A parsed suite: its name, where it was read from, and its cells in order."""

    name: str
    path: str
    description: str
    cells: list[CellConfig] = field(default_factory=list)
    #: the registry entry of published results the suite names (``published = "..."``), or ""
    published: str = ""
    #: strategy label -> what the suite says about searching it (``clbench tune``; clbench.search)
    search: dict[str, Any] = field(default_factory=dict)


#: Model and training fields added after results format 1 (training: after format 2): at their
#: defaults they leave a hash unchanged.
_LATER_MODEL_FIELDS = ("norm", "norm_eps", "embed_norm", "init")
_DEFAULT_MODEL = ModelConfig()
_LATER_TRAINING_FIELDS = ("precision", "schedule", "warmup", "decay_to")
_DEFAULT_TRAINING = TrainingConfig()


def order_label(value: Any, tasks: list[int] | None = None) -> str:
    """A cell's ``order`` label: ``default``, a named order, or ``2-0-1``; with ``tasks``, the
    positions the cell runs on (``default, tasks 0-2``)."""
    if value is None:
        label = "default"
    elif isinstance(value, str):
        label = value
    else:
        label = "-".join(str(v) for v in value)
    return label if tasks is None else f"{label}, tasks {'-'.join(str(t) for t in tasks)}"


#: Range of each numeric field of [model] and [training] (fields not listed take any value of their
#: type): ("positive", "non-negative" or "fraction" = [0, 1)). Floats must also be finite.
FIELD_RANGES: dict[str, dict[str, str]] = {
    "ModelConfig": {
        "d_model": "positive", "n_layers": "positive", "n_heads": "positive", "mlp_ratio": "positive",
        "max_len": "positive", "dropout": "fraction", "norm_eps": "positive",
    },
    "TrainingConfig": {
        "epochs": "positive", "batch_size": "positive", "lr": "positive", "weight_decay": "non-negative",
        "momentum": "non-negative", "grad_clip": "non-negative", "length_window": "positive",
        "eval_batch_size": "positive", "threads": "positive", "warmup": "fraction", "decay_to": "fraction",
    },
}

_RANGE_OK = {
    "positive": (lambda v: v > 0, "greater than 0"),
    "non-negative": (lambda v: v >= 0, "at least 0"),
    "fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
}


def _check_range(cls, key: str, value: Any, where: str, section: str) -> None:
    if isinstance(value, float):
        _need(math.isfinite(value), where, f"field '{section}.{key}' must be a finite number, got {value!r}")
    rule = FIELD_RANGES.get(cls.__name__, {}).get(key)
    if rule is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        ok, what = _RANGE_OK[rule]
        _need(ok(value), where, f"field '{section}.{key}' must be {what}, got {value!r}")


def dataclass_from(cls, table: Any, where: str, section: str):
    """An instance of the dataclass ``cls`` (:class:`ModelConfig`, :class:`TrainingConfig`) from
    the TOML table ``table``: every key a field of ``cls``, of its type and in its range
    (:data:`FIELD_RANGES`); else a one-line :class:`UserError` naming ``where`` and
    ``section.field``."""
    _need(isinstance(table, dict), where, f"[{section}] must be a table")
    known = {f.name: f for f in fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in table.items():
        _need(key in known, where, f"unknown field '{section}.{key}' (fields: {', '.join(known)})")
        _need(
            type_ok(value, hints[key]),
            where,
            f"field '{section}.{key}' must be {type_name(hints[key])}, got {value!r}",
        )
        _check_range(cls, key, value, where, section)
    return cls(**table)


def _need(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise UserError(f"{where}: {msg}")
