"""The notebooks: stored with their outputs and figures, not stale against a fresh
small-mode run, one short setup cell that installs jmattersim on Colab without
replacing Colab's jax, jaxlib or torch, and the repository URL of pyproject.toml.

Fast: the stored notebooks alone. Slow: a fresh execution of each notebook
(minutes), and pip's plan for the setup cell's install command (needs the
package index).
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "notebooks_execute", REPO / "notebooks" / "execute.py"
)
execute = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(execute)

NOTEBOOKS = execute.NOTEBOOKS
IDS = [p.stem for p in NOTEBOOKS]
SETUP_MAX_LINES = 12
COLAB_KEEPS = ("jax", "jaxlib", "torch")  # what Colab has and the install must not replace


def stored(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def setup_names(source: str) -> dict:
    """``REPOSITORY`` and ``PIP_INSTALL`` as the setup cell defines them (only those
    assignments run: nothing is installed)."""
    wanted = [
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign)
        and any(getattr(t, "id", None) in ("REPOSITORY", "PIP_INSTALL") for t in node.targets)
    ]
    namespace: dict = {}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), "<setup cell>", "exec"), namespace)
    return namespace


# ------------------------------------------------------------------------------ fast


@pytest.mark.fast
def test_notebooks_found():
    assert [p.name for p in NOTEBOOKS] == [
        "01_quickstart.ipynb",
        "02_inverse_design.ipynb",
        "03_molecular_dynamics.ipynb",
        "04_phonons_and_elastic.ipynb",
        "05_finetune.ipynb",
        "06_relaxed_inverse_design.ipynb",
    ]


@pytest.mark.fast
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stored_outputs(path):
    """One top-to-bottom run of the code as it stands is stored: every code cell
    executed in order, no errors, output wherever a cell prints or shows something,
    a figure (image/png) wherever it plots, no volatile metadata, and the digest of
    the code that ran equal to the code's."""
    nb = stored(path)
    cells = code_cells(nb)
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1)), (
        f"{path.name} is not stored from one run: refresh it with notebooks/execute.py --write"
    )
    for k, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        where = f"{path.name}, cell {k}:\n{cell.source[:200]}"
        assert not [o for o in cell.outputs if o.output_type == "error"], where
        if re.search(r"\b(print|display)\(|plt\.show\(\)", cell.source):
            assert cell.outputs, f"no stored output: {where}"
        if "plt.show()" in cell.source:
            assert execute.has_figure(cell), f"no stored figure: {where}"
        assert "execution" not in cell.metadata, f"execution timestamps stored: {where}"
    assert execute.figures(nb) >= 2
    assert nb.metadata.get("language_info") == {"name": "python"}
    ran = nb.metadata.get("jmattersim", {}).get("outputs_from_code_sha256")
    assert ran == execute.code_digest(nb), (
        f"{path.name}: code changed after the run that made the stored outputs: "
        "refresh them with notebooks/execute.py --write"
    )


@pytest.mark.fast
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_repository_url_and_stored_outputs_note(path):
    """Badge and setup cell carry pyproject's Repository URL; the top says where
    the stored outputs come from."""
    repository = execute.repository_url()
    nb = stored(path)
    top = nb.cells[0]
    assert top.cell_type == "markdown"
    assert execute.colab_badge(repository, path.name) in top.source
    links = [
        m
        for c in nb.cells
        if c.cell_type == "markdown"
        for m in re.findall(r"https://colab\.research\.google\.com/github/[^)\s]*", c.source)
    ]
    assert links == [execute.colab_badge(repository, path.name).rsplit("(", 1)[1][:-1]]
    for words in ("stored outputs", "small mode", "random weights", "demo_model"):
        assert words in top.source, f"{path.name}: the first cell does not mention {words!r}"
    names = setup_names(execute.setup_cell(nb).source)
    assert names["REPOSITORY"] == repository


@pytest.mark.fast
def test_fill_repository():
    """execute.py --write's filling: a no-op with pyproject's URL, and another URL
    lands in the badge and the setup cell."""
    path = NOTEBOOKS[0]
    nb = stored(path)
    execute.fill_repository(nb, path.name, execute.repository_url())
    assert [c.source for c in nb.cells] == [c.source for c in stored(path).cells]
    other = "https://github.com/someone/fork"
    execute.fill_repository(nb, path.name, other)
    assert execute.colab_badge(other, path.name) in nb.cells[0].source
    assert setup_names(execute.setup_cell(nb).source)["REPOSITORY"] == other


@pytest.mark.fast
def test_setup_cell_short_and_shared():
    """One setup cell, the same in every notebook: a few lines that pip-install
    jmattersim from the repository (no extras: `convert` pins torch) on Colab only."""
    sources = {path.name: execute.setup_cell(stored(path)).source for path in NOTEBOOKS}
    source = sources[NOTEBOOKS[0].name]
    assert all(s == source for s in sources.values()), "the setup cells differ"
    assert len(source.strip().splitlines()) <= SETUP_MAX_LINES
    names = setup_names(source)
    args = names["PIP_INSTALL"]
    assert args[0] == "install"
    requirements = [a for a in args[1:] if not a.startswith("-")]
    assert requirements == [f"jmattersim @ git+{names['REPOSITORY']}"]
    assert 'if "google.colab" in sys.modules:' in source  # elsewhere it installs nothing


# ------------------------------------------------------------------------------ slow


# Fresh runs of minutes each (cold compile cache: MD, phonons and κ, fine-tuning on
# the 1M model) are in the long tier; what they call is tested in CI by test_md,
# test_phonons, test_elastic and test_train.
LONG_NOTEBOOKS = {
    "03_molecular_dynamics",
    "04_phonons_and_elastic",
    "05_finetune",
}
FRESH_RUNS = [
    pytest.param(path, marks=[pytest.mark.long] if path.stem in LONG_NOTEBOOKS else [])
    for path in NOTEBOOKS
]


@pytest.mark.slow
@pytest.mark.parametrize("path", FRESH_RUNS, ids=IDS)
def test_fresh_run_matches_stored(path):
    """A fresh small-mode execution (no cell may fail) has the stored cells, and
    the stored outputs are not stale in structure: every cell with output now has
    stored output, and the figure cells are the same."""
    fresh = execute.execute(stored(path), small=True)
    nb = stored(path)
    assert len(fresh.cells) == len(nb.cells)
    assert [c.cell_type for c in fresh.cells] == [c.cell_type for c in nb.cells]
    assert [c.source for c in fresh.cells] == [c.source for c in nb.cells]
    for k, (new, old) in enumerate(zip(fresh.cells, nb.cells, strict=True)):
        if old.cell_type != "code":
            continue
        where = (
            f"{path.name}, cell {k} (refresh: notebooks/execute.py --write):\n{old.source[:200]}"
        )
        if new.outputs:
            assert old.outputs, f"no stored output: {where}"
        assert execute.has_figure(new) == execute.has_figure(old), f"figure: {where}"


def _newer(version: str) -> str:
    """The next minor release of ``version`` (local part dropped): 0.10.2 -> 0.11.0."""
    major, minor = version.split("+")[0].split(".")[:2]
    return f"{major}.{int(minor) + 1}.0"


@pytest.mark.slow
@pytest.mark.parametrize("jax_versions", ["installed", "newer"])
def test_setup_cell_keeps_jax(jax_versions, tmp_path):
    """pip's plan for the setup cell's install command, with the git URL replaced
    by a copy of this checkout, in this environment: it installs jmattersim and
    neither jax, jaxlib nor torch. "newer": with jax, jaxlib and torch seen as a
    release newer than the installed one (as on Colab), via dist-info shadowing
    them on PYTHONPATH, so that an exact pin (such as the `convert` extra's torch)
    shows up as a replacement."""
    names = setup_names(execute.setup_cell(stored(NOTEBOOKS[0])).source)
    project = tmp_path / "jmattersim"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, project / name)
    for name in ("jmattersim", "convert_weights"):
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    git = f"git+{names['REPOSITORY']}"
    args = [a.replace(git, project.as_uri()) for a in names["PIP_INSTALL"]]
    assert args != names["PIP_INSTALL"], "the install command has no git URL of the repository"

    env = dict(os.environ, PIP_NO_INPUT="1")
    if jax_versions == "newer":
        overlay = tmp_path / "overlay"
        for dist in COLAB_KEEPS:
            try:
                version = _newer(importlib.metadata.version(dist))
            except importlib.metadata.PackageNotFoundError:
                continue
            info = overlay / f"{dist}-{version}.dist-info"
            info.mkdir(parents=True)
            (info / "METADATA").write_text(
                f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
            )
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(overlay), env.get("PYTHONPATH")]))
    report = tmp_path / "report.json"
    run = subprocess.run(
        [sys.executable, "-m", "pip", *args, "--dry-run", "--report", str(report)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    errors = [line for line in run.stderr.splitlines() if "ERROR" in line]
    assert run.returncode == 0, "\n".join(errors) or run.stderr[-3000:]
    plan = {
        item["metadata"]["name"].lower(): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert "jmattersim" in plan, plan
    replaced = {name: plan[name] for name in COLAB_KEEPS if name in plan}
    assert not replaced, f"the setup cell would install {replaced} ({jax_versions} versions)"
