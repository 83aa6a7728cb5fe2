"""The evaluation engine: every concrete path through a few compiled shapes, the
packing, the process settings, and the layering of the package."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest

import jmattersim
from jmattersim._src import cli, engine
from jmattersim._src.capacity import Capacity, Counts

from conftest import SHARED

DATA = [
    SHARED / "data" / f for f in ("mptrj-random-1k.xyz", "alexandria-random-1k.xyz", "mpf-TP.xyz")
]
PACKAGE = Path(jmattersim.__file__).parent


@pytest.fixture(scope="module")
def varied():
    """200 structures drawn at random (seed 0) from the three shared files."""
    frames = [a for path in DATA for a in ase.io.read(path, index=":")]
    rng = np.random.default_rng(0)
    return [frames[i] for i in rng.choice(len(frames), 200, replace=False)]


def test_every_entry_point_needs_at_most_3_shapes(model, varied, converted, tmp_path):
    """200 varied structures through the calculator, evaluate, forward_batch
    (batches of 16) and ``jmattersim predict``: each needs at most 3 compiled shapes
    (a stream one), and they agree with each other."""
    model_dir = converted["1M"]
    calc = jmattersim.MatterSimCalculator(model)
    with engine.recording() as shapes:
        singles = []
        for a in varied:
            a = a.copy()
            a.calc = calc
            singles.append((a.get_potential_energy(), a.get_forces(), a.get_stress()))
    assert 1 <= len(shapes) <= 3, shapes
    with engine.recording() as shapes:
        batch = jmattersim.evaluate(model, varied)
    assert len(shapes) == 1, shapes  # a stream packs into the top budget alone
    with engine.recording() as shapes:
        tensors = [
            jmattersim.forward_batch(
                model, varied[k : k + 16], include_forces=True, include_stresses=True
            )
            for k in range(0, len(varied), 16)
        ]
    assert 1 <= len(shapes) <= 3, shapes
    src = tmp_path / "varied.extxyz"
    ase.io.write(src, varied, format="extxyz")
    with engine.recording() as shapes:  # the command line, with its default chunk
        assert (
            cli.main(
                [
                    "predict",
                    str(src),
                    "--model",
                    str(model_dir),
                    "--out",
                    str(tmp_path / "out.extxyz"),
                    "--quiet",
                ]
            )
            == 0
        )
    assert len(shapes) == 1, shapes
    written = ase.io.read(tmp_path / "out.extxyz", index=":")
    energies = np.concatenate([np.asarray(t["total_energy"]) for t in tensors])
    forces = np.concatenate([np.asarray(t["forces"]) for t in tensors])
    start = 0
    for k, (e, f, s) in enumerate(singles):
        n = len(f)
        for other in (batch[k].energy, energies[k], written[k].get_potential_energy()):
            assert abs(other - e) <= 1e-5 * max(1.0, abs(e)), k
        for other in (batch[k].forces, forces[start : start + n], written[k].get_forces()):
            np.testing.assert_allclose(other, f, atol=1e-4, err_msg=str(k))
        np.testing.assert_allclose(written[k].get_stress(), s, atol=1e-5)
        start += n


@pytest.mark.fast
def test_plan_puts_each_structure_in_one_group_within_its_budget():
    rng = np.random.default_rng(1)
    edges = rng.integers(1, 20000, 300)
    counts = [Counts(max(1, int(e) // 30), int(e), int(e * rng.uniform(0, 20)), 1) for e in edges]
    groups = engine.plan(counts)
    seen = sorted(k for group, _ in groups for k in group)
    assert seen == list(range(len(counts)))
    top = engine.LADDER[-1]
    for group, budget in groups:
        total = sum((counts[k] for k in group), Counts(0, 0, 0, 0))
        assert budget.holds(total)
        assert budget == top or (len(group) == 1 and not top.holds(total))  # a stream: top
    full = [sum(counts[k].edges for k in g) / b.edges for g, b in groups if b == top]
    assert np.mean(full) > 0.85, np.mean(full)  # first-fit decreasing packs tightly
    for few in (counts[:1], counts[3:6], [Counts(2, 56, 480, 1)] * 3):  # short runs
        for group, budget in engine.plan(few):
            total = sum((few[k] for k in group), Counts(0, 0, 0, 0))
            assert budget == engine.smallest_rung(total)  # the smallest rung that holds it


@pytest.mark.fast
def test_first_fit_decreasing_keeps_every_count_strictly_below_the_budget():
    budget = Capacity(nodes=10, edges=100, triplets=1000, graphs=4)
    counts = [Counts(3, 33, 100, 1)] * 9
    groups = engine.first_fit_decreasing(list(range(9)), counts, budget)
    for group in groups:
        total = sum((counts[k] for k in group), Counts(0, 0, 0, 0))
        assert budget.holds(total)  # 3 x 33 = 99 < 100, 3 x 3 = 9 < 10
    assert [len(g) for g in groups] == [3, 3, 3]


# ------------------------------------------------------------------------------ process


def _python(code: str, **env) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.fast
def test_import_loads_no_torch_and_no_jax_md():
    out = _python(
        "import sys, jmattersim; print(sorted(m for m in ('torch', 'jax_md', "
        "'mattersim', 'convert_weights') if m in sys.modules))"
    )
    assert out.strip() == "[]"


@pytest.mark.fast
def test_process_settings_and_their_switches(tmp_path):
    code = (
        "import jax, jmattersim; from jmattersim._src import runtime; s = runtime.configure(); "
        "print(s['allocator_tuned'], s['compile_cache'], jax.config.jax_compilation_cache_dir)"
    )
    tuned, cache, jax_dir = _python(code, JMATTERSIM_CACHE=str(tmp_path)).split()
    assert tuned == "True" and cache == jax_dir == str(tmp_path / "xla")
    tuned, cache, jax_dir = _python(
        code, JMATTERSIM_ALLOCATOR="system", JMATTERSIM_COMPILE_CACHE="off"
    ).split()
    assert tuned == "False" and cache == jax_dir == "None"


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Modules of the packages that ``path`` imports, at any depth of its code:
    ``from X import a`` counts as an import of ``X.a`` where that is a module,
    else of ``X``."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = (
        module.removesuffix(".__init__")
        if path.name == "__init__.py"
        else module.rpartition(".")[0]
    )
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = f"{base}.{node.module or ''}".strip(".") if node.level else node.module
            for a in node.names:
                found.add(f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target)
    return found & modules


@pytest.mark.fast
def test_no_module_imports_one_that_imports_it_back():
    """The imports of jmattersim and convert_weights, function-level ones included,
    form no cycle, and jmattersim never imports convert_weights."""
    files = list(PACKAGE.rglob("*.py")) + list((PACKAGE.parent / "convert_weights").rglob("*.py"))
    names = {
        ".".join(f.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): f
        for f in files
    }
    graph = {name: _imports(f, set(names)) - {name} for name, f in names.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [node, nxt]))
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert "jmattersim._src.evaluate" in graph["jmattersim"]
    assert graph["jmattersim._src.geometry"] == set()
    # convert_weights (the conversion CLI) may import jmattersim, never the reverse
    back = sorted(
        f"{n} -> {d}"
        for n, deps in graph.items()
        if n.startswith("jmattersim")
        for d in deps
        if d.startswith("convert_weights")
    )
    assert not back, f"jmattersim imports convert_weights: {back}"


@pytest.mark.fast
def test_one_progress_bar_for_every_long_job(capsys):
    """relax, md, predict_file and train show tqdm's bar through one helper (the only
    module that imports tqdm); without progress it shows nothing."""
    from jmattersim._src.progress import progress_bar

    users = sorted(
        p.name
        for p in PACKAGE.rglob("*.py")
        if "tqdm" in _imports_of(p) and p.name != "progress.py"
    )
    assert users == [], f"tqdm imported outside progress.py: {users}"
    bar = progress_bar(True, total=3, unit="step", desc="md", mininterval=0)
    bar.update(3)
    bar.set_postfix(loss="0.1")
    bar.close()
    assert "md: 100%" in capsys.readouterr().err
    quiet = progress_bar(False, total=3)
    quiet.update(3)
    quiet.set_postfix(loss="0.1")
    quiet.close()
    assert capsys.readouterr() == ("", "")


def _imports_of(path: Path) -> set[str]:
    """Top-level names of the modules ``path`` imports, at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names
