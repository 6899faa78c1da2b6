"""Shared fixtures: a fresh plugin host, and a helper that runs a small suite end to end."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# tests/test_kernels.py runs the Triton attention kernels in Triton's CPU interpreter, which must be
# chosen before anything imports triton (some test dependencies do, e.g. avalanche through torch).
if os.environ.get("CLBENCH_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def host():
    """A freshly loaded plugin host, installed as the process-wide one for the test."""
    from clbench import host as host_mod

    h = host_mod.Host().load(os.environ.get("CLBENCH_PLUGINS"))
    old = host_mod._host
    host_mod._host = h
    yield h
    host_mod._host = old


TINY_MODEL = {"d_model": 32, "n_layers": 1, "n_heads": 2}
TINY_TRAINING = {"epochs": 1, "batch_size": 64, "lr": 1e-3}


def make_suite(
    strategies,
    *,
    stream: str = "split-digits",
    stream_params: dict | None = None,
    orders=None,
    seeds=(0,),
    model: dict | None = None,
    training: dict | None = None,
    name: str = "test",
) -> dict:
    """A suite as a dict (what tomllib would give). ``strategies``: names or full tables."""
    strat = [s if isinstance(s, dict) else {"name": s} for s in strategies]
    st = {"name": stream, "params": stream_params if stream_params is not None else {"patch_size": 4}}
    if orders is not None:
        st["orders"] = orders
    return {
        "name": name,
        "seeds": list(seeds),
        "model": {**TINY_MODEL, **(model or {})},
        "training": {**TINY_TRAINING, **(training or {})},
        "streams": [st],
        "strategies": strat,
    }


@pytest.fixture
def run_suite_dict(tmp_path, host):
    """``run_suite_dict(suite_dict, out=None) -> (SuiteRun, Tables)``: run a suite in tmp_path."""
    from clbench.results import load
    from clbench.suite import parse_suite
    from clbench.suiterun import run_suite

    def run(data: dict, out: Path | None = None, **kw):
        suite = parse_suite(data, "test-suite.toml", host)
        out = out or tmp_path / "results"
        r = run_suite(suite, out, progress=False, host=host, **kw)
        return r, load(out)

    return run
