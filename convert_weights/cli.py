"""``jmattersim-convert SRC OUT``: a MatterSim checkpoint to a jmattersim model."""

from __future__ import annotations

import argparse
import sys
import warnings

from jmattersim._src.config import M3GNetConfig
from jmattersim._src.published import canonical_name

from .convert import ConversionError, convert_file, fetch_pretrained
from .mapping import table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jmattersim-convert",
        description="Convert a MatterSim .pth checkpoint (or the name mattersim-v1.0.0-1M / "
        "-5M) into a jmattersim model directory (Orbax checkpoint + config.json).",
    )
    parser.add_argument("src", nargs="?", help=".pth file, or mattersim-v1.0.0-1M / -5M")
    parser.add_argument("out", nargs="?", help="output directory")
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
        parser.error("SRC and OUT are required")
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
