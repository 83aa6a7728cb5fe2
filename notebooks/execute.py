"""Executes the notebooks top to bottom and fails on the first cell error.

    JMATTERSIM_SMALL=1 python notebooks/execute.py            # CI: small sizes
    python notebooks/execute.py --inplace                     # refresh stored outputs

Executed copies go to --out (default: a temporary folder) unless --inplace;
each run starts in an empty working directory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path,
                        default=sorted(HERE.glob("[0-9]*.ipynb")))
    parser.add_argument("--out", type=Path, help="folder for the executed copies")
    parser.add_argument("--inplace", action="store_true", help="overwrite the notebooks")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per cell")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="notebooks-"))
    out.mkdir(parents=True, exist_ok=True)
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as cwd:
            NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                           resources={"metadata": {"path": cwd}}).execute()
        target = path if args.inplace else out / path.name
        nbformat.write(nb, target)
        images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []))
        print(f"{path.name}: ran in {time.perf_counter() - start:.0f} s, {images} figures "
              f"-> {target}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
