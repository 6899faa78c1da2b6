"""``mixed``: one stream made of the tasks of several streams, in one sequence (docs/cpt.md).

Continual pre-training and fine-tuning in turn: text domains (``corpus``, ``corpus-builtin``)
and generative tasks (``algorithmic``, ``instructions``, ...) in sequence, such as domain A → task
T → domain B → task U. Each task keeps its kind, so the loop trains and scores each by its own
(:mod:`clbench.kinds`); the accuracy matrix holds each task's primary score in its own unit, and
the summary gives the metrics of each kind apart.

Every part must tokenize alike (the same tokenizer, ``bytes`` or a model's): ``tokenizer`` sets
it for every part that takes one (a suite's ``model.init`` sets it). Its generative parts put
their prompts alike (one ``prompt_format``: through the model's chat template or as plain text;
text domains are plain text either way), and the stream's tokenizer is theirs (generation stops
at its end token). The held-out general text is the first part's that has one.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from clbench import hookimpl
from clbench.errors import UserError
from clbench.host import get_host
from clbench.params import check_params

from .base import Stream
from .digits import check_order


def _parts(streams: Any) -> list[tuple[str, dict]]:
    if not isinstance(streams, list) or not streams:
        raise UserError("stream 'mixed': 'streams' must be a non-empty list of tables {name = ..., params = {...}}")
    out = []
    for i, s in enumerate(streams):
        if not isinstance(s, dict) or not isinstance(s.get("name"), str) or set(s) - {"name", "params"}:
            raise UserError(f"stream 'mixed': streams[{i}] must be a table {{name = ..., params = {{...}}}}, got {s!r}")
        params = s.get("params", {})
        if not isinstance(params, dict) or "order" in params:
            raise UserError(f"stream 'mixed': streams[{i}].params must be a table without 'order' "
                            "(the mixed stream's sequence orders the tasks)")
        out.append((s["name"], dict(params)))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise UserError(f"stream 'mixed': a stream appears twice in 'streams' ({', '.join(names)}): list it once")
    return out


def _interleave(tasks: list[list[str]]) -> list[tuple[int, int]]:
    """(part, task) pairs taking one task of each part in turn: A0, B0, A1, B1, ..."""
    out = []
    for k in range(max(len(t) for t in tasks)):
        out += [(p, k) for p, t in enumerate(tasks) if k < len(t)]
    return out


def mixed(
    streams: list[dict],
    sequence: list[str] | None = None,
    tokenizer: str | None = None,
    order: list[int] | None = None,
) -> Stream:
    """The tasks of several streams in one sequence.

    :param streams: the parts, each a table ``{name = "<stream>", params = {...}}``.
    :param sequence: the tasks in stream order, each ``"<stream>:<task>"``
        (``"corpus-builtin:python"``); default: one task of each part in turn.
    :param tokenizer: the tokenizer of every part that takes one (a suite's ``model.init`` sets it).
    """
    host = get_host()
    built: list[Stream] = []
    for name, params in _parts(streams):
        if name == "mixed":
            raise UserError("stream 'mixed' cannot hold another mixed stream")
        entry = host.get("streams", name)
        if tokenizer is not None:
            if params.get("tokenizer", tokenizer) != tokenizer:
                raise UserError(f"stream 'mixed': part '{name}' sets tokenizer {params['tokenizer']!r}, the mixed "
                                f"stream's is {tokenizer!r}: leave it out of the part")
            params = {**params, "tokenizer": tokenizer}
        full = check_params(entry.obj, params, what=f"stream 'mixed': part '{name}'", exclude=("order",))
        part = entry.obj(**{k: v for k, v in full.items() if k in params})
        if not isinstance(part, Stream):
            raise UserError(f"stream 'mixed': part '{name}' is not a stream")
        built.append(part)
    # the same vocabulary; how prompts are put (a chat template's turns, and the token that ends
    # an answer) is the generative parts' alone: text domains are plain text either way
    described = [repr({k: v for k, v in p.tokenizer.describe().items() if k not in ("prompt_format", "eos_id")})
                 if p.tokenizer is not None else "none" for p in built]
    if len(set(described)) > 1 or any(p.input_kind != "tokens" for p in built):
        raise UserError("stream 'mixed': its parts tokenize differently (" +
                        "; ".join(f"{p.name}: {d}" for p, d in zip(built, described)) +
                        "): give them the same tokenizer (bytes, or a model's: set the mixed stream's tokenizer)")
    prompted = [p for p in built if "generation" in p.kinds]
    formats = {p.name: getattr(p.tokenizer, "prompt_format", "plain") for p in prompted}
    if len(set(formats.values())) > 1:
        raise UserError("stream 'mixed': its generative parts put prompts differently (" +
                        ", ".join(f"{n}: prompt_format {f!r}" for n, f in formats.items()) + "): give them one prompt_format")
    names = [[t.name for t in p.tasks] for p in built]
    if sequence is None:
        pairs = _interleave(names)
    else:
        if not isinstance(sequence, list) or not sequence:
            raise UserError("stream 'mixed': 'sequence' must be a non-empty list of \"<stream>:<task>\"")
        index = {p.name: i for i, p in enumerate(built)}
        pairs = []
        for item in sequence:
            stream, _, task = str(item).partition(":")
            if stream not in index or task not in names[index[stream]]:
                known = ", ".join(f"{p.name}:{t}" for p, ts in zip(built, names) for t in ts)
                raise UserError(f"stream 'mixed': no task {item!r} in its parts (they have: {known})")
            pairs.append((index[stream], names[index[stream]].index(task)))
        if len(set(pairs)) != len(pairs):
            raise UserError(f"stream 'mixed': a task appears twice in the sequence {sequence}")
    pairs = [pairs[i] for i in check_order(order, len(pairs))]
    taken = [built[p].tasks[k] for p, k in pairs]
    clash = {t.name for t in taken if sum(u.name == t.name for u in taken) > 1}
    tasks = [replace(t, name=f"{built[p].name}:{t.name}") if t.name in clash else t for (p, _), t in zip(pairs, taken)]
    general = next((p.general for p in built if p.general is not None), None)
    params = {"streams": [{"name": p.name, "params": p.params} for p in built],
              "sequence": [f"{built[p].name}:{names[p][k]}" for p, k in pairs]}
    labels = built[0].labels if all(p.labels == built[0].labels for p in built) else ()
    if any(p.kinds == ("classification",) for p in built) and not labels:
        raise UserError("stream 'mixed': classification parts must share one label space")
    stream = Stream(name="mixed", scenario="task-incremental", input_kind="tokens", labels=labels, tasks=tasks,
                    input_dim=max(p.input_dim for p in built), max_len=max(p.max_len for p in built),
                    tokenizer=(prompted or built)[0].tokenizer, params=params, general=general)
    return stream.reorder(list(range(len(tasks))))  # each example's task position: its place in the sequence


@hookimpl
def register_streams(register):
    register("mixed", mixed, description="the tasks of several streams in one sequence: text domains and generative tasks in turn")
