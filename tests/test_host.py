"""The plugin host: registration, the allow-list, listing (every hook's documentation and test:
tests/test_hooks.py)."""

import pytest

import clbench
from clbench.errors import UserError
from clbench.host import Host


class EchoStrategy:
    """A strategy defined by a test."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale


class TestPlugin:
    __test__ = False

    @clbench.hookimpl
    def register_strategies(self, register):
        register("test-echo", EchoStrategy)


@pytest.fixture
def test_plugin(host):
    """Register a plugin for one test, unregister it after."""
    plugin = TestPlugin()
    host.register(plugin, name="test-plugin")
    yield plugin
    host.unregister(plugin)


def test_a_plugin_registered_in_a_fixture_is_found(host, test_plugin):
    entry = host.get("strategies", "test-echo")
    assert entry.obj is EchoStrategy
    assert entry.plugin == "test-plugin"
    assert entry.description == "A strategy defined by a test."


def test_and_is_gone_after_unregistering(host):
    plugin = TestPlugin()
    host.register(plugin, name="tmp")
    assert "test-echo" in host.names("strategies")
    host.unregister(plugin)
    assert "test-echo" not in host.names("strategies")


def test_builtins_register_through_the_same_hooks(host):
    assert {"naive", "joint", "cumulative"} <= set(host.names("strategies"))
    assert host.get("streams", "split-digits").plugin == "clbench.tasks.digits"
    assert host.get("strategies", "naive").plugin == "clbench.strategies.naive"
    assert {"acc", "bwt", "fwt", "forgetting"} <= set(host.names("metrics"))
    assert "local" in host.names("executors")
    assert "console" in host.names("reporters")


def test_unknown_name_lists_the_known_ones(host):
    with pytest.raises(UserError, match=r"unknown strategy 'nope' \(known strategies: .*naive"):
        host.get("strategies", "nope")


def test_a_name_registered_twice_is_an_error_naming_both(host):
    class Dup:
        @clbench.hookimpl
        def register_strategies(self, register):
            register("naive", EchoStrategy)

    host.register(Dup(), name="dup-plugin")
    with pytest.raises(UserError, match="registered twice.*clbench.strategies.naive.*dup-plugin"):
        host.names("strategies")


def test_allow_list_restricts_the_plugins_that_load():
    h = Host().load("naive,split-digits,digits")
    assert h.names("strategies") == ["naive"]
    assert h.names("streams") == ["split-digits"]
    assert Host().load("").names("strategies") == []


def test_plugins_listing_says_what_each_registers(host, test_plugin):
    listing = dict(host.plugins())
    assert listing["test-plugin"] == {"strategies": ["test-echo"]}
    assert listing["clbench.strategies.joint"]["strategies"] == ["joint (train_data)"]
    assert listing["clbench.strategies.naive"]["strategies"] == ["naive"]


