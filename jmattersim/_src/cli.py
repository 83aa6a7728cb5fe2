"""``jmattersim predict FILE``: energy, forces and stress of every frame."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .published import DEFAULT as DEFAULT_MODEL


def predict_command(args: argparse.Namespace) -> int:
    from .io import load_model
    from .sharding import graph_mesh
    from .stream import CHUNK, predict_file, resume_point
    from .validate import InvalidStructureError

    chunk = CHUNK if args.chunk is None else args.chunk
    try:
        model = load_model(args.model)
    except (ConnectionError, FileNotFoundError, ValueError) as e:
        print(f"jmattersim predict: cannot load model '{args.model}': {e}", file=sys.stderr)
        return 1
    src = Path(args.file)
    if not src.is_file():
        print(f"jmattersim predict: cannot read '{src}': no such file", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else src.with_suffix(".jmattersim.extxyz")
    mesh = graph_mesh() if args.devices == "all" else None
    done, _ = resume_point(model, src, out, chunk) if not args.restart else (0, 0)
    if done:
        print(f"jmattersim predict: resuming after {done} frames already in {out}")
    start = time.perf_counter()
    written = done
    try:
        for count in predict_file(
            model,
            src,
            out,
            chunk=chunk,
            mesh=mesh,
            resume=not args.restart,
            progress=not args.quiet,
        ):
            written = count
    except InvalidStructureError as e:
        print(
            f"jmattersim predict: {src}: {e} ({written} frames before it are in {out}; "
            "fix the frame and rerun to resume)",
            file=sys.stderr,
        )
        return 1
    except Exception as e:  # ASE raises many types for unreadable files
        print(f"jmattersim predict: cannot read '{src}': {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if written == 0:
        print(f"jmattersim predict: '{src}' holds no structures", file=sys.stderr)
        out.unlink(missing_ok=True)
        return 1
    elapsed = time.perf_counter() - start
    print(f"{written} frames ({written - done} now) in {elapsed:.1f} s -> {out}")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jmattersim")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jmattersim", description=__doc__)
    parser.add_argument("--version", action="version", version=f"jmattersim {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="energy, forces and stress of every frame of FILE")
    p.add_argument("file", help="any structure file ASE reads (extxyz, cif, POSCAR, traj...)")
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="converted model directory, a .pth checkpoint, or a published name "
        f"(default {DEFAULT_MODEL})",
    )
    p.add_argument("--out", help="output extxyz (default FILE.jmattersim.extxyz)")
    p.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="frames evaluated and written at a time (default 256: a chunk "
        "packs into the engine's largest budget, so a run compiles once)",
    )
    p.add_argument(
        "--devices",
        choices=["all", "one"],
        default="all",
        help="split batches across all local devices (default), or use one",
    )
    p.add_argument(
        "--restart", action="store_true", help="ignore an interrupted run's progress and start over"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    return predict_command(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
