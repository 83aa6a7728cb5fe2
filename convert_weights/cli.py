"""``jmattersim-convert SRC OUT``: a MatterSim checkpoint to a jmattersim model;
``jmattersim-convert --to-torch DIR OUT.pth``: back to a MatterSim checkpoint."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from jmattersim._src.config import M3GNetConfig
from jmattersim._src.conversion import ConversionError, convert_file, fetch_pretrained
from jmattersim._src.published import canonical_name
from jmattersim._src.torch_names import table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jmattersim-convert",
        description="Convert a MatterSim .pth checkpoint (or the name mattersim-v1.0.0-1M / "
        "-5M) into a jmattersim model directory (Orbax checkpoint + config.json); with "
        "--to-torch, a jmattersim model directory back into a MatterSim .pth checkpoint.",
    )
    parser.add_argument(
        "src", nargs="?", help=".pth file, or mattersim-v1.0.0-1M / -5M (--to-torch: DIR)"
    )
    parser.add_argument("out", nargs="?", help="output directory (--to-torch: OUT.pth)")
    parser.add_argument(
        "--to-torch",
        action="store_true",
        help="export the model directory SRC as the MatterSim checkpoint OUT.pth, which "
        "upstream's Potential.from_checkpoint loads",
    )
    parser.add_argument(
        "--strict", action="store_true", help="fail on checkpoint keys the model does not use"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    parser.add_argument(
        "--table",
        action="store_true",
        help="print the torch -> Flax name table for the default config",
    )
    args = parser.parse_args(argv)
    if args.table:
        for key, path, shape, transposed in table(M3GNetConfig()):
            print(f"{key:55s} {path:60s} {shape}{' (transposed)' if transposed else ''}")
        return 0
    if not args.src or not args.out:
        parser.error(
            "DIR and OUT.pth are required" if args.to_torch else "SRC and OUT are required"
        )
    if args.to_torch:
        if args.strict:
            parser.error("--strict applies to SRC.pth -> DIR, not to --to-torch")
        return _to_torch(args.src, args.out, args.overwrite)
    warnings.simplefilter("always")
    try:
        src = args.src
        if canonical_name(src) is not None:
            src = fetch_pretrained(src)
        model = convert_file(src, args.out, strict=args.strict, overwrite=args.overwrite)
    except (ConversionError, FileNotFoundError, FileExistsError, ConnectionError) as e:
        print(f"jmattersim-convert: error: {e}", file=sys.stderr)
        return 1
    print(f"converted {args.src} -> {args.out}: {model.config}, {model.num_parameters} parameters")
    return 0


def _to_torch(src: str, out: str, overwrite: bool) -> int:
    """``--to-torch``: the model directory ``src`` to the checkpoint ``out``."""
    from jmattersim._src.checkpoint import read_model

    from .export import export_checkpoint

    def fail(message: str) -> int:
        print(f"jmattersim-convert: error: {message.splitlines()[0]}", file=sys.stderr)
        return 1

    directory = Path(src).expanduser()
    if not directory.exists():
        return fail(f"{src} does not exist: expected a jmattersim model directory")
    if not directory.is_dir():
        return fail(
            f"{src} is not a directory: --to-torch exports a jmattersim model directory "
            "(written by jmattersim-convert or save_model)"
        )
    target = Path(out).expanduser()
    if target.is_dir():
        return fail(f"{out} is a directory; give the .pth file to write")
    if target.exists() and not overwrite:
        return fail(f"{out} exists; pass --overwrite to replace it")
    try:
        model = read_model(directory)
        export_checkpoint(model, target, overwrite=overwrite)
    except (ConversionError, ValueError, OSError) as e:
        return fail(str(e))
    print(
        f"exported {src} -> {out}: {model.config}, {model.num_parameters} parameters "
        "(MatterSim checkpoint; load with Potential.from_checkpoint)"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
