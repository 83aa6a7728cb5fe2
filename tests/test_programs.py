"""Stored programs (``jmattersim._src.programs``): a second process reads back what
the first traced, and a stored program is used only where everything that decides
it is unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from small_reference import MODEL

from jmattersim._src import programs

WARM_RUN = """
import collections, json, sys
import jax.monitoring
traced, loaded = collections.Counter(), collections.Counter()
def listen(event, duration, **kw):
    if event == "/jax/core/compile/jaxpr_trace_duration":
        traced[kw.get("fun_name")] += 1
    if event == "/jmattersim/programs/load_duration":
        loaded[kw.get("fun_name")] += 1
jax.monitoring.register_event_duration_secs_listener(listen)
from ase.build import bulk
import jmattersim
calc = jmattersim.MatterSimCalculator(jmattersim.load_model(sys.argv[1]))
energies = []
for atoms in (bulk("Si", "diamond", a=5.43), bulk("NaCl", "rocksalt", a=5.6)):
    atoms.calc = calc
    energies.append(atoms.get_potential_energy())
print(json.dumps({"traced": traced, "loaded": loaded, "energies": energies}))
"""


def _run(cache) -> dict:
    env = {**os.environ, "JMATTERSIM_COMPILE_CACHE": str(cache)}
    out = subprocess.run(
        [sys.executable, "-c", WARM_RUN, str(MODEL)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.fast
def test_a_warm_process_traces_nothing_it_traced_before(tmp_path):
    """Two fresh processes run the calculator on the same structures with one compile
    cache: the first traces the model's program and stores it; the second reads it
    back and traces only JAX's stub that calls a stored program (``call``), once per
    program, and gives the same energies."""
    cold = _run(tmp_path / "cache")
    warm = _run(tmp_path / "cache")
    assert cold["traced"].get("predict_batch", 0) >= 1 and not cold["loaded"], cold
    assert warm["loaded"] == {"predict_batch": cold["traced"]["predict_batch"]}, warm
    assert warm["traced"] == {"call": warm["loaded"]["predict_batch"]}, warm
    np.testing.assert_array_equal(warm["energies"], cold["energies"])
    stored = list((tmp_path / "cache" / "programs").glob("engine.predict_batch-*.program"))
    assert len(stored) == cold["traced"]["predict_batch"]


def _toy(x, y):
    return {"sum": jnp.sin(x) @ y, "scaled": 2 * y}


@pytest.fixture
def store(tmp_path, monkeypatch):
    """Programs stored in ``tmp_path``, none in memory, the environment recomputed."""
    monkeypatch.setattr(programs, "programs_dir", lambda: tmp_path)
    monkeypatch.setattr(programs, "_ENVIRONMENT", [])
    programs.clear_memory()
    yield tmp_path
    programs.clear_memory()


def _toy_program(dtype=jnp.float32) -> str:
    """Runs the toy program as a new process would (nothing in memory): 'traced' or
    'loaded', by JAX's and the store's monitoring events."""
    programs.clear_memory()
    events = []

    def listen(event: str, duration: float, **kwargs) -> None:
        if kwargs.get("fun_name") == "toy":
            events.append("loaded" if event == programs.LOADED else "traced")

    args = (jnp.ones((3, 3), dtype), jnp.arange(3, dtype=dtype))
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        out = programs.compiled("tests.toy", _toy, args, {"setting": 1})(*args)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    np.testing.assert_allclose(out["sum"], np.sin(np.ones((3, 3))) @ np.arange(3), rtol=1e-6)
    np.testing.assert_allclose(out["scaled"], 2 * np.arange(3))
    (event,) = events
    return event


def _stored(store) -> list:
    return sorted(store.glob("tests.toy-*.program"), key=os.path.getmtime)


@pytest.mark.fast
def test_a_changed_jax_or_jmattersim_version_traces_again(store, monkeypatch):
    """Stored, a program is read back, not traced; with another jax version, jaxlib
    version or jmattersim source (a digest of its files), it is traced again into a
    file of its own."""
    assert _toy_program() == "traced"
    assert _toy_program() == "loaded"
    assert len(_stored(store)) == 1
    import jaxlib

    for target, name, value in (
        (jax, "__version__", "0.0.1"),
        (jaxlib, "__version__", "0.0.1"),
        (programs, "source_digest", lambda: "an edited checkout"),
    ):
        with monkeypatch.context() as patch:
            patch.setattr(target, name, value)
            patch.setattr(programs, "_ENVIRONMENT", [])
            assert _toy_program() == "traced", name
            assert _toy_program() == "loaded", name
        assert len(_stored(store)) == 2, name
        _stored(store)[-1].unlink()
        monkeypatch.setattr(programs, "_ENVIRONMENT", [])
        assert _toy_program() == "loaded", name  # the original is still used


@pytest.mark.fast
def test_a_damaged_file_is_traced_again_and_replaced(store):
    assert _toy_program() == "traced"
    (path,) = _stored(store)
    path.write_bytes(b"half a file")
    assert _toy_program() == "traced"  # and the values are right
    assert _toy_program() == "loaded"


@pytest.mark.fast
def test_x64_programs_are_their_own(store):
    """The same arguments under ``jax_enable_x64`` are another program (x64 changes
    what a trace makes of Python scalars and index types)."""
    assert _toy_program() == "traced"
    with jax.enable_x64(True):
        assert _toy_program() == "traced"
        assert _toy_program(jnp.float64) == "traced"
        assert _toy_program(jnp.float64) == "loaded"
    assert len(_stored(store)) == 3
