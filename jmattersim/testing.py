"""Random-weight models for tests, benchmarks and demos, and upstream's side of them.

- [`random_checkpoint`][jmattersim.testing.random_checkpoint]: upstream MatterSim's
  own model with seeded random weights, saved by upstream's ``Potential.save`` (a
  *genuine-format* checkpoint: what the published files look like, without their
  weights).
- [`ARCHITECTURES`][jmattersim.testing.ARCHITECTURES] and
  [`SEEDS`][jmattersim.testing.SEEDS]: the architectures the tests and benchmarks
  use, and their random seeds; [`genuine_checkpoint`][jmattersim.testing.genuine_checkpoint]
  makes one of them.
- [`upstream_potential`][jmattersim.testing.upstream_potential] and
  [`upstream_graph`][jmattersim.testing.upstream_graph]: upstream's calculator model
  and graph, the reference everything is compared with.
- [`demo_model`][jmattersim.testing.demo_model]: the published checkpoint where it
  can be had, else a random one, labelled as such.

All but ``ARCHITECTURES`` and ``SEEDS`` need torch and the ``mattersim`` package
(``pip install "jmattersim[test]"``); they are imported on first call.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ._src.checkpoint import init_model
from ._src.examples import Demo, demo_model, random_checkpoint
from ._src.published import ARCHITECTURES as _PUBLISHED

ARCHITECTURES: dict[str, dict[str, int]] = {
    **{name.rsplit("-", 1)[-1]: args for name, args in _PUBLISHED.items()},
    "small": {"num_blocks": 2, "units": 16, "max_l": 2, "max_n": 2},
}
"""Upstream ``model_args`` by short name: "1M" (num_blocks=3, units=128) and "5M"
(num_blocks=4, units=256), the published architectures, and "small" (2 blocks, 16
units, max_l = max_n = 2), about 10x cheaper per step, for tests of the MD and
relaxation machinery."""
SEEDS: dict[str, int] = {"1M": 0, "5M": 1, "small": 3}
"""The random seed of each architecture's test checkpoint, by the names of
[`ARCHITECTURES`][jmattersim.testing.ARCHITECTURES]."""


def genuine_checkpoint(path: str | os.PathLike, name: str) -> Path:
    """The genuine-format random checkpoint of one of the test architectures.

    Args:
        path: the ``.pth`` file to write.
        name: a key of [`ARCHITECTURES`][jmattersim.testing.ARCHITECTURES]; its
            random seed comes from [`SEEDS`][jmattersim.testing.SEEDS].

    Returns:
        ``path``, as a ``Path``.
    """
    return random_checkpoint(path, SEEDS[name], **ARCHITECTURES[name])


def upstream_potential(path: str | os.PathLike):
    """Upstream's ``Potential`` loaded from a .pth checkpoint, on the CPU.

    Args:
        path: the ``.pth`` checkpoint.

    Returns:
        (mattersim.forcefield.potential.Potential): upstream's model with its
            calculator interface.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mattersim.forcefield.potential import Potential

        return Potential.from_checkpoint(str(path), device="cpu", load_training_state=False)


def upstream_graph(atoms, model_args: dict):
    """Upstream's graph of a structure, as its calculator builds it.

    Args:
        atoms (ase.Atoms): the structure.
        model_args (dict): upstream ``model_args`` (``cutoff`` and
            ``threebody_cutoff`` are used).

    Returns:
        (tuple): ``(graph, atoms)``, the torch_geometric ``Data`` and the atoms as
        upstream normalises them (wrapped into the cell; a molecule put into its
        cubic box).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mattersim.datasets.utils.convertor import GraphConvertor

        normalised = atoms.copy()
        convertor = GraphConvertor(
            "m3gnet", model_args["cutoff"], True, model_args["threebody_cutoff"]
        )
        return convertor.convert(normalised), normalised


__all__ = [
    "ARCHITECTURES",
    "SEEDS",
    "Demo",
    "demo_model",
    "genuine_checkpoint",
    "init_model",
    "random_checkpoint",
    "upstream_graph",
    "upstream_potential",
]
