"""The plugin host: loads built-in plugins, then the ``clbench`` entry-point group, and keeps the
registries that the registration hooks fill.

Every part of clbench reaches the loaded plugins one way: :func:`get_host`, the process's host,
loaded on first use. Nothing takes a host as an argument. To run with other plugins (a test
registering its own, a worker process loading the driver's), build a :class:`Host` and install
it: ``with use_host(host): ...`` for a block, :func:`set_host` for the rest of the process.

``CLBENCH_PLUGINS`` (comma-separated) restricts which plugins load: built-ins by module name
(``clbench.strategies.naive``) or short name (``naive``), third-party plugins by entry-point name.
Set it to an empty string to load none.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Iterator

import pluggy

from . import hookspecs
from .errors import UserError

#: Built-in plugins, loaded before any third-party one. They use the same hooks as everyone.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "clbench.tasks.digits",
    "clbench.tasks.text",
    "clbench.tasks.hub",
    "clbench.tasks.algorithmic",
    "clbench.tasks.countries",
    "clbench.tasks.instructions",
    "clbench.tasks.trace",
    "clbench.tasks.jsonl_instructions",
    "clbench.tasks.corpus",
    "clbench.tasks.mixed",
    "clbench.strategies.naive",
    "clbench.strategies.joint",
    "clbench.strategies.cumulative",
    "clbench.strategies.replay",
    "clbench.strategies.ewc",
    "clbench.strategies.lwf",
    "clbench.strategies.agem",
    "clbench.strategies.der",
    "clbench.strategies.si",
    "clbench.strategies.gdumb",
    "clbench.strategies.lora",
    "clbench.strategies.lamol",
    "clbench.strategies.ssr",
    "clbench.strategies.ilora",
    "clbench.strategies.moelora",
    "clbench.strategies.migu",
    "clbench.results.metrics",
    "clbench.plugins.executors",
    "clbench.plugins.reporters",
    "clbench.plugins.progress",
    "clbench.plugins.avalanche",
)

#: The registries, one per registration hook (``register_<category>``).
CATEGORIES = ("streams", "strategies", "metrics", "reporters", "executors", "observers")
SINGULAR = {"streams": "stream", "strategies": "strategy", "metrics": "metric", "reporters": "reporter",
            "executors": "executor", "observers": "observer"}


def implemented_hooks(obj: Any) -> list[str]:
    """Names of the cell hooks a strategy class (or object) implements."""
    return sorted(
        name
        for name in dir(obj)
        if not name.startswith("_") and hasattr(getattr(obj, name, None), "clbench_impl")
    )


@dataclass(frozen=True)
class Entry:
    """One registered thing: its category (:data:`CATEGORIES`), name, the object, a description
    and the plugin that gave it."""

    category: str
    name: str
    obj: Any
    description: str
    plugin: str


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def new_manager(specs) -> pluggy.PluginManager:
    """A plugin manager that knows the hooks of ``specs`` (:class:`clbench.hookspecs.HostSpecs`,
    or :class:`~clbench.hookspecs.CellSpecs` for a cell's)."""
    pm = pluggy.PluginManager("clbench")
    pm.add_hookspecs(specs)
    return pm


def register_checked(pm: pluggy.PluginManager, plugin: Any, name: str, what: str) -> None:
    """Register ``plugin`` on ``pm``, refusing (one line) a hook ``pm`` does not know: a cell hook
    on a plugin of the host, or a registration hook on a strategy."""
    try:
        pm.register(plugin, name=name)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        raise UserError(f"{what}: {str(exc).splitlines()[0]}") from None


class Host:
    """The global plugin manager and its registries."""

    def __init__(self) -> None:
        self.pm = new_manager(hookspecs.HostSpecs)
        self._registries: dict[str, dict[str, Entry]] | None = None

    # -- loading -------------------------------------------------------------------------------
    def load(self, allow: str | None = None) -> "Host":
        """Load the built-ins, then entry points, honouring ``allow`` (``CLBENCH_PLUGINS``)."""
        allowed = None if allow is None else {a.strip() for a in allow.split(",") if a.strip()}

        def ok(name: str) -> bool:
            return allowed is None or name in allowed or _short(name) in allowed

        for modname in DEFAULT_PLUGINS:
            if ok(modname):
                self.register(importlib.import_module(modname), name=modname)
        for ep in entry_points(group="clbench"):
            if not ok(ep.name) or self.pm.has_plugin(ep.name):
                continue
            try:
                self.register(ep.load(), name=ep.name)
            except Exception as exc:  # a broken third-party plugin must not take clbench down
                print(f"clbench: warning: plugin {ep.name!r} failed to load: {exc}", file=sys.stderr)
        return self

    def register(self, plugin: Any, name: str | None = None) -> str:
        """Register a plugin object or module (tests use this in a fixture). A plugin that
        implements a hook the host does not know (a cell hook belongs on a strategy's class, not
        on its module) is refused with a one-line :class:`UserError`."""
        self._registries = None
        register_checked(self.pm, plugin, name, f"plugin {name or getattr(plugin, '__name__', plugin)!r}")
        return name or self.pm.get_name(plugin)

    def unregister(self, plugin: Any = None, name: str | None = None) -> None:
        self._registries = None
        self.pm.unregister(plugin, name=name)

    # -- registries ----------------------------------------------------------------------------
    @property
    def registries(self) -> dict[str, dict[str, Entry]]:
        if self._registries is None:
            self._registries = self._collect()
        return self._registries

    def _collect(self) -> dict[str, dict[str, Entry]]:
        regs: dict[str, dict[str, Entry]] = {c: {} for c in CATEGORIES}
        for category in CATEGORIES:
            caller = getattr(self.pm.hook, f"register_{category}")
            for impl in caller.get_hookimpls():
                plugin_name = self.pm.get_name(impl.plugin) or repr(impl.plugin)

                def register(name: str, obj: Any, description: str = "", *, _category=category, _p=plugin_name) -> None:
                    if not isinstance(name, str) or not name:
                        raise ValueError(f"plugin {_p!r} registered a {SINGULAR[_category]} without a name")
                    if not callable(obj):
                        raise ValueError(f"plugin {_p!r}: {SINGULAR[_category]} {name!r} is not callable")
                    if name in regs[_category]:
                        other = regs[_category][name].plugin
                        raise UserError(
                            f"{SINGULAR[_category]} {name!r} is registered twice: by {other!r} and by {_p!r}"
                        )
                    doc = description or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
                    regs[_category][name] = Entry(_category, name, obj, doc, _p)

                impl.function(register=register)
        return regs

    def get(self, category: str, name: str) -> Entry:
        """The entry ``name`` of ``category`` (``"strategies"``, ...); an unknown name is a one-line
        error listing the known."""
        reg = self.registries[category]
        if name not in reg:
            known = ", ".join(sorted(reg)) or "none"
            raise UserError(f"unknown {SINGULAR[category]} {name!r} (known {category}: {known})")
        return reg[name]

    def names(self, category: str) -> list[str]:
        """The names registered in ``category``, sorted."""
        return sorted(self.registries[category])

    def plugins(self) -> list[tuple[str, dict[str, list[str]]]]:
        """Each loaded plugin with what it registered, by category (a strategy is listed with the
        cell hooks it implements, e.g. ``"joint (train_data)"``)."""
        out = []
        for name, _plugin in self.pm.list_name_plugin():
            what: dict[str, list[str]] = {}
            for category, reg in self.registries.items():
                names = []
                for e in reg.values():
                    if e.plugin != name:
                        continue
                    hooks = implemented_hooks(e.obj) if category == "strategies" else []
                    names.append(f"{e.name} ({', '.join(hooks)})" if hooks else e.name)
                if names:
                    what[category] = names
            out.append((name, what))
        return out


_host: Host | None = None


def get_host() -> Host:
    """The process's host, loaded on first use (honouring ``CLBENCH_PLUGINS``): the one way
    clbench reaches its plugins."""
    global _host
    if _host is None:
        _host = Host().load(os.environ.get("CLBENCH_PLUGINS"))
    return _host


def set_host(host: Host | None) -> Host | None:
    """Make ``host`` the process's host (None: load one on the next :func:`get_host`); returns
    the one it replaces. A worker process installs the driver's plugins with it."""
    global _host
    previous, _host = _host, host
    return previous


@contextlib.contextmanager
def use_host(host: Host) -> Iterator[Host]:
    """``with use_host(host):`` makes ``host`` the process's host inside the block (a test with a
    plugin of its own, a host restricted to some plugins), then puts the previous one back."""
    previous = set_host(host)
    try:
        yield host
    finally:
        set_host(previous)
