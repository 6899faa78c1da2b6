"""Validate a plugin's parameters against its signature.

Stream factories and strategy classes declare their parameters as keyword arguments with type
annotations and defaults; a suite's ``params`` table is checked against that signature before any
cell runs. A wrong name or a wrong type is a :class:`~clbench.errors.UserError` naming it.
"""

from __future__ import annotations

import inspect
import keyword
import types
import typing
from typing import Any, Callable, Literal

import torch

from .errors import UserError

_MISSING = inspect.Parameter.empty


def type_ok(value: Any, annotation: Any) -> bool:
    if annotation is _MISSING or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(type_ok(value, a) for a in typing.get_args(annotation))
    if origin is Literal:
        return value in typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if origin in (list, tuple, typing.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return not args or all(type_ok(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def signature_params(fn: Callable) -> dict[str, inspect.Parameter]:
    """The keyword parameters ``fn`` accepts (``self`` and ``*args`` excluded)."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    sig = inspect.signature(target)
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolved forward references: fall back to raw annotations
        hints = {}
    out = {}
    for name, p in sig.parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[name] = p.replace(annotation=hints.get(name, p.annotation))
    return out


def suite_name(name: str) -> str:
    """How a suite spells a parameter: ``lambda_`` (a keyword's Python spelling) is ``lambda``."""
    return name[:-1] if name.endswith("_") and keyword.iskeyword(name[:-1]) else name


def check_params(fn: Callable, params: dict[str, Any], *, what: str, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check ``params`` against ``fn``'s signature; return them with defaults filled in.

    :param what: how the error names the plugin, e.g. ``strategy 'replay'``.
    :param exclude: parameters the host passes itself (not settable from a suite).

    A parameter whose Python name is a keyword plus ``_`` (``lambda_``) is written without the
    underscore in a suite (``lambda``); the returned dict uses the Python name.
    """
    accepted = {k: p for k, p in signature_params(fn).items() if k not in exclude}
    for key, value in params.items():
        name = key + "_" if keyword.iskeyword(key) and key + "_" in accepted else key
        if name not in accepted:
            names = ", ".join(sorted(suite_name(k) for k in accepted)) or "none"
            raise UserError(f"{what} has no parameter '{key}' (it takes: {names})")
        ann = accepted[name].annotation
        if not type_ok(value, ann):
            raise UserError(
                f"{what}: parameter '{key}' must be {type_name(ann)}, got {value!r}"
            )
    params = {(k + "_" if keyword.iskeyword(k) and k + "_" in accepted else k): v for k, v in params.items()}
    full = {}
    for key, p in accepted.items():
        if key in params:
            full[key] = params[key]
        elif p.default is not _MISSING:
            full[key] = p.default
        else:
            raise UserError(f"{what}: missing required parameter '{key}'")
    return full


def require(ok: bool, name: str, must: str, value: Any) -> None:
    """A plugin's own check of a parameter's value (its range, a combination): when ``ok`` is
    false, raise the one-line error ``parameter 'name' must be <must>, got <value>``.

    The host prefixes where the value came from (the suite file and the strategy's name)."""
    if not ok:
        raise UserError(f"parameter '{name}' must be {must}, got {value!r}")


def device_from(name: str, what: str = "training.device"):
    """The torch device ``name`` names (``auto``: CUDA when available); a one-line
    :class:`UserError` naming the setting ``what`` when it is not one, or is CUDA without CUDA."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"{what} {name!r} is not a device torch knows") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{what} is {name!r} but CUDA is not available")
    return dev
