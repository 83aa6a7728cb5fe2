"""Executes the notebooks top to bottom and fails on the first cell error.

    JMATTERSIM_SMALL=1 python notebooks/execute.py --out DIR   # check: executed copies in DIR
    python notebooks/execute.py --write                        # refresh the stored notebooks

``--write`` runs in small mode (``JMATTERSIM_SMALL=1``), fills the repository URL of
pyproject.toml (``[project.urls] Repository``) into each notebook's Colab badge and
setup cell, and writes the notebooks back with their outputs (figures included) and
without volatile metadata (execution timestamps), so that a re-run gives a small diff.
Without ``--write``, the stored notebooks run unchanged (small mode as the environment
says) and the executed copies go to ``--out`` (default: a temporary folder). Each
notebook runs in an empty temporary working directory.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
from nbclient import NotebookClient

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NOTEBOOKS = sorted(HERE.glob("[0-9]*.ipynb"))

# The setup cell's line that names the repository, and the Colab badge (markdown).
REPOSITORY_LINE = re.compile(r'^REPOSITORY = "[^"]*"', re.M)
BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
BRANCH = "main"


def repository_url(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """``[project.urls] Repository`` of pyproject.toml, the one place it is written."""
    with open(pyproject, "rb") as f:
        url = tomllib.load(f)["project"]["urls"]["Repository"]
    url = url.rstrip("/").removesuffix(".git")
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        raise ValueError(
            f"the Repository URL {url!r} is not a GitHub repository "
            "(Colab opens notebooks from GitHub)"
        )
    return url


def colab_badge(repository: str, notebook: str) -> str:
    """The markdown of the 'Open In Colab' badge of ``notebook`` (a file name)."""
    owner_name = repository.removeprefix("https://github.com/")
    link = (
        f"https://colab.research.google.com/github/{owner_name}/blob/{BRANCH}/notebooks/{notebook}"
    )
    return f"[![Open In Colab]({BADGE_IMAGE})]({link})"


def setup_cell(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook's setup cell: its first code cell (it defines ``REPOSITORY``)."""
    cell = next(c for c in nb.cells if c.cell_type == "code")
    if not REPOSITORY_LINE.search(cell.source):
        raise ValueError('the first code cell is not the setup cell: no REPOSITORY = "..." line')
    return cell


def fill_repository(nb: nbformat.NotebookNode, notebook: str, repository: str) -> None:
    """Writes ``repository`` into the Colab badges and the setup cell of ``nb``."""
    badge = colab_badge(repository, notebook)
    badges = 0
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source, n = BADGE.subn(lambda _: badge, cell.source)
            badges += n
    if not badges:
        raise ValueError(f"{notebook}: no Open In Colab badge to fill")
    cell = setup_cell(nb)
    cell.source = REPOSITORY_LINE.sub(lambda _: f'REPOSITORY = "{repository}"', cell.source)


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Environment variables set while a kernel starts (it inherits them)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute(
    nb: nbformat.NotebookNode, small: bool | None = None, timeout: int = 1200
) -> nbformat.NotebookNode:
    """Runs ``nb`` in place (an empty temporary working directory; small mode if
    ``small``, the environment's choice if None), records the digest of the code it
    ran (:func:`code_digest`) and tidies its metadata; returns it.
    Raises ``nbclient.exceptions.CellExecutionError`` on the first failing cell."""
    env = {} if small is None else {"JMATTERSIM_SMALL": "1" if small else "0"}
    digest = code_digest(nb)
    with tempfile.TemporaryDirectory() as cwd, environment(**env):
        NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            record_timing=False,
            resources={"metadata": {"path": cwd}},
        ).execute()
    nb.metadata["jmattersim"] = {"outputs_from_code_sha256": digest}
    return tidy(nb)


def code_digest(nb: nbformat.NotebookNode) -> str:
    """SHA-256 of the code cells' sources: stored with the outputs, it tells
    whether code changed after the run that made them."""
    code = "\0".join(c.source for c in nb.cells if c.cell_type == "code")
    return hashlib.sha256(code.encode()).hexdigest()


def tidy(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drops what changes from run to run or machine to machine: execution
    timestamps and the kernel's version details."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def has_figure(cell: nbformat.NotebookNode) -> bool:
    return any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


def figures(nb: nbformat.NotebookNode) -> int:
    return sum(has_figure(c) for c in nb.cells if c.cell_type == "code")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, default=NOTEBOOKS)
    parser.add_argument("--out", type=Path, help="folder for the executed copies")
    parser.add_argument(
        "--write",
        action="store_true",
        help="small mode; fill in the repository URL; store the outputs",
    )
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    args = parser.parse_args(argv)
    if args.write and args.out:
        parser.error("--write stores the notebooks in place: no --out")
    out = None if args.write else args.out or Path(tempfile.mkdtemp(prefix="notebooks-"))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    repository = repository_url() if args.write else None
    total = time.perf_counter()
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=4)
        if repository is not None:
            fill_repository(nb, path.name, repository)
        start = time.perf_counter()
        execute(nb, small=True if args.write else None, timeout=args.timeout)
        target = path if out is None else out / path.name
        nbformat.write(nb, target)
        print(
            f"{path.name}: ran in {time.perf_counter() - start:.0f} s, {figures(nb)} "
            f"figures -> {target}",
            flush=True,
        )
    print(f"{len(args.notebooks)} notebooks in {time.perf_counter() - total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
