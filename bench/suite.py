"""Suite files (TOML): read, checked and expanded into cells, and written back.

A suite names streams (each with parameters and task orders), strategies (each with
parameters; several names combine into one cell), seeds, and the model and training sections.
Every field is checked before any cell runs; a mistake is a one-line :class:`UserError` that
names the field and the file. See docs/suites.md for the format. What a suite parses into (the
config types: :class:`clbench.config.CellConfig`, ...) lives in :mod:`clbench.config`.
"""

from __future__ import annotations

import copy
import json
import math
import tomllib
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

from .config import CellConfig, StrategySpec, Suite, TrainingConfig, dataclass_from, order_label
from .errors import UserError
from .host import get_host
from .models.backbones import is_pretrained, resolve
from .models.transformer import ModelConfig
from .params import check_params
from .search import SearchRequest, resolve_space

TOP_KEYS = {"name", "description", "seeds", "model", "training", "streams", "strategies", "search"}


def builtin_suites() -> dict[str, str]:
    """Names of the suites shipped as package data, mapped to their TOML text."""
    out = {}
    for entry in resources.files("clbench.suites").iterdir():
        if entry.name.endswith(".toml"):
            out[entry.name[:-5]] = entry.read_text(encoding="utf-8")
    return out


def read_suite(spec: str) -> tuple[dict, str]:
    """Parse a suite given as a path or a built-in name; return (data, where)."""
    path = Path(spec)
    if path.suffix == ".toml" or path.is_file():  # a folder named like a built-in suite is not a suite
        if not path.is_file():
            raise UserError(f"suite file not found: {spec}")
        text, where = path.read_text(encoding="utf-8"), str(path)
    else:
        suites = builtin_suites()
        if spec not in suites:
            raise UserError(
                f"unknown suite {spec!r}: not a file, and not a built-in suite ({', '.join(sorted(suites))})"
            )
        text, where = suites[spec], f"built-in suite '{spec}'"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{where}: invalid TOML: {exc}") from None
    return data, where


def _need(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise UserError(f"{where}: {msg}")


def _training(table: Any, where: str, section: str) -> TrainingConfig:
    return dataclass_from(TrainingConfig, table, where, section)  # the device: in the suite's preflight


def parse_suite(data: dict, where: str) -> Suite:
    """Validate a parsed suite against the loaded plugins and expand it into cells."""
    host = get_host()
    for key in data:
        _need(key in TOP_KEYS, where, f"unknown field '{key}' (fields: {', '.join(sorted(TOP_KEYS))})")
    name = data.get("name", Path(where).stem if where.endswith(".toml") else "suite")
    _need(isinstance(name, str), where, "field 'name' must be a string")
    _need(
        bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and not name.startswith("."),
        where,
        f"field 'name' must be a plain folder name (no '/', '\\', leading '.', not empty), got {name!r}",
    )
    description = data.get("description", "")
    _need(isinstance(description, str), where, "field 'description' must be a string")
    seeds = data.get("seeds", [0])
    _need(
        isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds),
        where,
        "field 'seeds' must be a non-empty list of integers",
    )
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    _need(not repeated, where, f"field 'seeds' lists seed {repeated[0]} twice: a cell would be counted twice" if repeated else "")
    model_table = data.get("model", {})
    model = dataclass_from(ModelConfig, model_table, where, "model")
    init_digest = ""
    if is_pretrained(model.init):
        # the backbone fixes the architecture; a suite may only restate it
        backbone = _wrap(lambda: resolve(model.init), where)
        for key, value in backbone.arch.items():
            _need(
                key not in model_table or model_table[key] == value,
                where,
                f"model.{key} = {model_table.get(key)!r} conflicts with model.init {model.init!r} "
                f"(which has {value!r}): leave architecture fields out",
            )
        model = replace(model, **backbone.arch)
        init_digest = backbone.digest()
    _need(model.d_model % model.n_heads == 0, where, "model.d_model must be divisible by model.n_heads")
    training_table = data.get("training", {})
    training = _training(training_table, where, "training")

    streams = data.get("streams")
    _need(isinstance(streams, list) and streams, where, "missing field 'streams' (a list of [[streams]] tables)")
    strategies = data.get("strategies")
    _need(
        isinstance(strategies, list) and strategies,
        where,
        "missing field 'strategies' (a list of [[strategies]] tables)",
    )

    stream_specs = []
    for i, s in enumerate(streams):
        at = f"streams[{i}]"
        _need(isinstance(s, dict), where, f"{at} must be a table")
        for key in s:
            _need(key in {"name", "params", "orders", "tasks"}, where,
                  f"unknown field '{at}.{key}' (fields: name, params, orders, tasks)")
        _need(isinstance(s.get("name"), str), where, f"missing field '{at}.name'")
        params = s.get("params", {})
        _need(isinstance(params, dict), where, f"field '{at}.params' must be a table")
        entry = _wrap(lambda: host.get("streams", s["name"]), where)
        _need("order" not in params, where, f"'{at}.params.order': give task orders as '{at}.orders'")
        full = _wrap(lambda: check_params(entry.obj, params, what=f"stream '{s['name']}'", exclude=("order",)), where)
        if is_pretrained(model.init) and "tokenizer" not in params and "tokenizer" in full:
            full = {**full, "tokenizer": model.init}  # text in the backbone's own tokens
        orders = s.get("orders", [None])
        _need(isinstance(orders, list) and orders, where, f"field '{at}.orders' must be a non-empty list")
        for o in orders:
            _need(
                o is None or isinstance(o, (str, list)),
                where,
                f"'{at}.orders': each order is a name or a list of tasks, got {o!r}",
            )
        orders = [None if o == "default" else o for o in orders]
        tasks = s.get("tasks")
        _need(
            tasks is None or (isinstance(tasks, list) and tasks and len(set(tasks)) == len(tasks)
                              and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tasks)),
            where,
            f"field '{at}.tasks' must be a non-empty list of distinct task positions (integers >= 0), got {tasks!r}",
        )
        stream_specs.append((s["name"], full, orders, tasks))

    strategy_specs, searches = [], {}
    for i, s in enumerate(strategies):
        at = f"strategies[{i}]"
        _need(isinstance(s, dict), where, f"{at} must be a table")
        for key in s:
            _need(
                key in {"name", "params", "label", "training", "search"},
                where,
                f"unknown field '{at}.{key}' (fields: name, params, label, training, search)",
            )
        names = s.get("name")
        if isinstance(names, str):
            names = [names]
        _need(
            isinstance(names, list) and names and all(isinstance(n, str) for n in names),
            where,
            f"missing field '{at}.name' (a strategy name, or a list of names to combine)",
        )
        _need(len(set(names)) == len(names), where, f"'{at}.name' names a strategy more than once: {names}")
        params = s.get("params", {})
        _need(isinstance(params, dict), where, f"field '{at}.params' must be a table")
        if len(names) > 1:
            for key in params:
                _need(key in names, where, f"'{at}.params.{key}': with several strategies, params are keyed by strategy name")
        parts = []
        for n in names:
            entry = _wrap(lambda: host.get("strategies", n), where)
            p = params.get(n, {}) if len(names) > 1 else params
            _need(isinstance(p, dict), where, f"field '{at}.params.{n}' must be a table")
            parts.append((n, _wrap(lambda: check_params(entry.obj, p, what=f"strategy '{n}'"), where)))
        label = s.get("label", "+".join(names))
        _need(isinstance(label, str), where, f"field '{at}.label' must be a string")
        own = s.get("training", {})
        _need(isinstance(own, dict), where, f"field '{at}.training' must be a table")
        # this strategy's changes to the suite's [training]
        tcfg = _training({**training_table, **own}, where, f"{at}.training") if own else training
        strategy_specs.append((StrategySpec(label, tuple(parts)), tcfg))
        searches[label] = SearchRequest.of(s, names, data.get("search", {}), at)

    labels = [sp.label for sp, _ in strategy_specs]
    dup = {x for x in labels if labels.count(x) > 1}
    _need(not dup, where, f"strategy label(s) {', '.join(sorted(dup))} appear twice: give each a distinct 'label'")

    # the search tables (clbench tune), checked here so that every command refuses a bad one
    for strat, tcfg in strategy_specs:
        _wrap(lambda: resolve_space(strat, tcfg, searches[strat.label], defaults=False), where)

    cells = []
    for sname, sparams, orders, tasks in stream_specs:
        for order in orders:
            for strat, tcfg in strategy_specs:
                for seed in seeds:
                    cells.append(CellConfig(name, sname, sparams, order_label(order, tasks), order, strat, seed, model,
                                      tcfg, init_digest, None if tasks is None else tuple(tasks)))
    return Suite(name=name, path=where, description=description, cells=cells, search=searches)


def _wrap(fn, where: str):
    try:
        return fn()
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


def override(data: dict, pairs: list[str] | None) -> dict:
    """``data`` (a parsed suite) with ``--set SECTION.FIELD=VALUE`` pairs applied: ``model.init``,
    ``training.epochs``, or ``streams.FIELD`` for a parameter of every stream
    (``streams.max_len=128``). Values are read as TOML (``128``, ``true``, ``"post"``); a bare
    word is a string. The result is checked as any suite is. ``model.init`` naming a pretrained
    model replaces the suite's architecture fields with the model's (a suite sized for a small
    decoder on a CPU runs a real checkpoint with one ``--set``), unless ``--set`` gives them too."""
    data = copy.deepcopy(data)
    given = {p.partition("=")[0].strip() for p in pairs or []}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name or section not in ("model", "training", "streams"):
            raise UserError(f"--set {pair!r}: expected model.FIELD=VALUE, training.FIELD=VALUE or streams.PARAM=VALUE")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        if section == "streams":
            for stream in data.get("streams", []):
                if isinstance(stream, dict):
                    stream.setdefault("params", {})[name] = value
        else:
            table = data.setdefault(section, {})
            _need(isinstance(table, dict), "--set", f"[{section}] must be a table")
            table[name] = value
            if (section, name) == ("model", "init") and is_pretrained(str(value)):
                for key in ModelConfig.ARCHITECTURE:
                    if f"model.{key}" not in given:
                        table.pop(key, None)
    return data


def load_suite(spec: str, overrides: list[str] | None = None) -> Suite:
    """The suite ``spec`` names (a file or a built-in suite), with ``overrides`` (``--set``)."""
    data, where = read_suite(spec)
    if overrides:
        data, where = override(data, overrides), f"{where} (with --set {' '.join(overrides)})"
    return parse_suite(data, where)


def _toml_key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "-_" for c in k) else json.dumps(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }" if v else "{}"
    raise TypeError(f"cannot write {v!r} in TOML")


def to_toml(data: dict) -> str:
    """A suite's data as TOML text (what :func:`tomllib.loads` reads back as ``data``): what
    ``clbench tune`` writes its tuned suite with."""
    def is_array_of_tables(v):
        return isinstance(v, list) and v and all(isinstance(x, dict) for x in v)

    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict) and not is_array_of_tables(v)]
    for k, v in data.items():
        if isinstance(v, dict):
            lines += ["", f"[{_toml_key(k)}]", *(f"{_toml_key(kk)} = {_toml_value(vv)}" for kk, vv in v.items())]
    for k, v in data.items():
        if is_array_of_tables(v):
            for item in v:
                lines += ["", f"[[{_toml_key(k)}]]", *(f"{_toml_key(kk)} = {_toml_value(vv)}" for kk, vv in item.items())]
    return "\n".join(lines) + "\n"
