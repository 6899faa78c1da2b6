"""Search spaces of ``clbench tune`` (docs/tuning.md).

A dimension is written the same way in a strategy's default space (its class attribute
``search_space``) and in a suite (``[search]``, ``[strategies.search]``)::

    lambda = { log-uniform = [1.0, 1e6] }     # uniform, log-uniform: floats in [low, high]
    rank = { choice = [2, 4, 8, 16] }         # one of the values
    repeat = { int = [1, 8] }                 # int, log-int: integers in [low, high]
    memory_size = 500                         # a plain value fixes the parameter (not searched)
    training.lr = { log-uniform = [1e-4, 1e-2] }   # a [training] field

What a strategy searches, lowest precedence first: the learning rate, log-uniform over a decade
either side of the suite's ``training.lr`` (:data:`DEFAULT_LR_DECADES`: every strategy gets the
same search of it, unless the entry's own ``training`` table sets ``lr``); the default space of
each strategy it combines, less the parameters the suite sets in the entry's ``params`` (and the
training fields its ``training`` table sets); the suite's top-level ``[search]`` (training
fields, for every strategy: ``lr = 1e-3`` fixes the rate for all); the entry's own ``search``
table. Every dimension is checked before anything runs: an
unknown parameter, a range that is empty or a log range through zero, a float range over an
integer parameter, and an end of a range (or a choice) that the strategy itself refuses are each
one line.
"""

from __future__ import annotations

import keyword
import math
from dataclasses import dataclass, replace
from typing import Any

from .config import TrainingConfig, dataclass_from
from .errors import UserError
from .host import get_host
from .params import check_params, suite_name

#: Every strategy's default search of the learning rate: log-uniform over this many decades on
#: either side of the suite's ``training.lr`` (1e-3: [1e-4, 1e-2]).
DEFAULT_LR_DECADES = 1

#: The distributions a dimension is sampled from, each a ray.tune sampling function.
DISTRIBUTIONS = ("uniform", "log-uniform", "int", "log-int", "choice")

Key = tuple[str, str]  # (strategy name, parameter) or ("training", field); Python names


@dataclass(frozen=True)
class Dim:
    """One searched dimension: ``distribution`` (one of :data:`DISTRIBUTIONS`) over ``values`` (the
    range's two ends, or the choices)."""

    distribution: str
    values: tuple

    @property
    def log(self) -> bool:
        return self.distribution.startswith("log")

    def domain(self):
        """The dimension as a Ray Tune search space domain (ranges include both ends)."""
        from ray import tune  # optional (clbench[tune]): only a tune asks for domains

        lo, hi = self.values[0], self.values[-1]
        return {
            "uniform": lambda: tune.uniform(lo, hi),
            "log-uniform": lambda: tune.loguniform(lo, hi),
            "int": lambda: tune.randint(lo, hi + 1),  # randint's upper end is exclusive
            "log-int": lambda: tune.lograndint(lo, hi + 1),
            "choice": lambda: tune.choice(list(self.values)),
        }[self.distribution]()

    def to_toml(self) -> dict:
        return {self.distribution: list(self.values)}

    def __str__(self) -> str:
        return f"{self.distribution} {list(self.values)}"


@dataclass(frozen=True)
class Space:
    """What a strategy's tuning searches (``dims``) and sets (``fixed``), by :data:`Key`."""

    dims: dict[Key, Dim]
    fixed: dict[Key, Any]


@dataclass(frozen=True)
class SearchRequest:
    """What a suite says about searching one ``[[strategies]]`` entry: the parameters its
    ``params`` sets, by strategy name, and the training fields its ``training`` sets (under
    ``"training"``), which defaults leave alone; its ``search`` table; the suite's ``[search]``."""

    given: dict[str, frozenset[str]]
    own: Any
    suite: Any
    at: str

    @classmethod
    def of(cls, entry: dict, names: list[str], suite_search: Any, at: str) -> "SearchRequest":
        params = entry.get("params", {})
        given = {}
        for n in names:
            p = params.get(n, {}) if len(names) > 1 else params
            given[n] = frozenset(_py(k) for k in (p if isinstance(p, dict) else {}))
        given["training"] = frozenset(entry.get("training", {}) or {})
        return cls(given, entry.get("search", {}), suite_search, at)


def _py(name: str) -> str:
    """A suite's spelling of a parameter in Python (``lambda`` -> ``lambda_``)."""
    return name + "_" if keyword.iskeyword(name) else name


def key_name(key: Key, single: bool = True) -> str:
    """How a report and the trials table name a dimension: ``lambda``, ``ewc.lambda`` (in a
    combination), ``training.lr``."""
    part, name = key
    return f"{part}.{suite_name(name)}" if part == "training" or not single else suite_name(name)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_dim(value: Any, what: str) -> Dim | Any:
    """A dimension (a one-key table naming its distribution), or a plain value to fix."""
    if not isinstance(value, dict):
        return value
    if len(value) != 1 or next(iter(value)) not in DISTRIBUTIONS:
        raise UserError(f"{what}: a dimension is one of {', '.join(f'{{ {k} = [...] }}' for k in DISTRIBUTIONS)}, "
                        f"or a plain value to fix it; got {value!r}")
    dist, args = next(iter(value.items()))
    if dist == "choice":
        if not isinstance(args, list) or not args:
            raise UserError(f"{what}: choice needs a non-empty list of values, got {args!r}")
        return Dim(dist, tuple(args))
    if not (isinstance(args, list) and len(args) == 2 and all(_number(a) for a in args)):
        raise UserError(f"{what}: {dist} needs [low, high] (two finite numbers), got {args!r}")
    lo, hi = args
    if dist in ("int", "log-int") and not all(isinstance(a, int) for a in args):
        raise UserError(f"{what}: {dist} needs integer ends, got {args!r}")
    if not lo < hi:
        raise UserError(f"{what}: empty range {args!r} (low must be below high; a plain value fixes it)")
    if dist.startswith("log") and lo <= 0:
        raise UserError(f"{what}: log range through zero {args!r} (a {dist} range must be above 0)")
    return Dim(dist, (lo, hi))


def _candidates(dim: Dim | Any) -> list:
    """Values that stand for a dimension in checks: its ends (and a float inside a float range,
    which an integer parameter refuses), or its choices, or the fixed value."""
    if not isinstance(dim, Dim):
        return [dim]
    if dim.distribution in ("uniform", "log-uniform"):
        lo, hi = dim.values
        return [lo, hi, float(math.sqrt(lo * hi) if dim.log else (lo + hi) / 2)]
    return list(dim.values)


def _entries(spec, request: SearchRequest, defaults: bool, training=None) -> list[tuple[Key, Any, str]]:
    """Every (key, raw dimension, where) that applies to the entry, lowest precedence first."""
    out: list[tuple[Key, Any, str]] = []
    names = [n for n, _ in spec.parts]
    if defaults and training is not None and "lr" not in request.given.get("training", ()) and training.lr > 0:
        d = 10.0 ** DEFAULT_LR_DECADES
        ends = [float(f"{training.lr / d:.6g}"), float(f"{training.lr * d:.6g}")]  # 3e-05 * 10: 0.0003, not 0.00030000000000000003
        out.append((("training", "lr"), {"log-uniform": ends},
                    "clbench tune's default search of training.lr"))

    def table(t: Any, what: str) -> dict:
        if not isinstance(t, dict):
            raise UserError(f"field '{what}' must be a table")
        return t

    if defaults:
        for n in names:
            space = getattr(get_host().get("strategies", n).obj, "search_space", None) or {}
            what = f"strategy '{n}': default search space"
            for k, v in table(space, what).items():
                if k == "training":
                    out += [(("training", f), fv, f"{what}: training.{f}") for f, fv in table(v, what).items()
                            if f not in request.given.get("training", ())]
                elif _py(k) not in request.given.get(n, ()):
                    out.append(((n, _py(k)), v, f"{what}: {k}"))
    for f, v in table(request.suite, "search").items():
        out.append((("training", f), v, f"'search.{f}'"))
    at = f"{request.at}.search"
    for k, v in table(request.own, at).items():
        if k == "training":
            out += [(("training", f), fv, f"'{at}.training.{f}'") for f, fv in table(v, f"{at}.training").items()]
        elif len(names) == 1:
            out.append(((names[0], _py(k)), v, f"'{at}.{k}'"))
        elif k in names:
            out += [((k, _py(p)), pv, f"'{at}.{k}.{p}'") for p, pv in table(v, f"{at}.{k}").items()]
        else:
            raise UserError(f"'{at}.{k}': with several strategies, search is keyed by strategy name ({', '.join(names)})")
    return out


def resolve_space(spec, training, request: SearchRequest, *, defaults: bool = True) -> Space:
    """The space a strategy entry (``spec``: a :class:`clbench.config.StrategySpec`, with
    ``training``, its TrainingConfig) is tuned over, every dimension checked (see the module
    docstring); ``defaults=False`` leaves out the strategies' default spaces (the suite's check)."""
    merged: dict[Key, tuple[Any, str]] = {}
    for key, raw, what in _entries(spec, request, defaults, training):
        merged[key] = (parse_dim(raw, what), what)
    params = dict(spec.parts)
    for (part, name), (dim, what) in merged.items():
        for value in _candidates(dim):
            if part == "training":
                dataclass_from(TrainingConfig, {name: value}, what, "training")
                continue
            factory = get_host().get("strategies", part).obj
            try:
                full = check_params(factory, {**params[part], name: value}, what=f"strategy '{part}'")
                factory(**full)
            except UserError as exc:
                raise UserError(f"{what}: {exc}") from None
    return Space(
        dims={k: d for k, (d, _) in merged.items() if isinstance(d, Dim)},
        fixed={k: d for k, (d, _) in merged.items() if not isinstance(d, Dim)},
    )


def apply(cell, values: dict[Key, Any]):
    """``cell`` (a :class:`clbench.config.CellConfig`) with ``values`` set: strategy parameters and
    training fields, by :data:`Key`."""
    values = {k: _plain(v) for k, v in values.items()}
    parts = tuple((n, {**p, **{name: v for (part, name), v in values.items() if part == n}}) for n, p in cell.strategy.parts)
    training = replace(cell.training, **{name: v for (part, name), v in values.items() if part == "training"})
    return replace(cell, strategy=replace(cell.strategy, parts=parts), training=training)


def current(cell, keys) -> dict[Key, Any]:
    """The values ``cell`` has for ``keys`` (the default point of a search)."""
    params = dict(cell.strategy.parts)
    return {k: getattr(cell.training, k[1]) if k[0] == "training" else params[k[0]][k[1]] for k in keys}


def _plain(v: Any) -> Any:
    """A numpy scalar as the Python number it is (config hashes are JSON)."""
    return v.item() if hasattr(v, "item") and not isinstance(v, (list, dict, str)) else v
