"""Models for notebooks and demos: the published checkpoint where it can be had,
otherwise a genuine-format checkpoint with seeded random weights (clearly
labelled: its numbers are not physics)."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import NamedTuple

from .checkpoint import Model, init_model
from .config import M3GNetConfig
from .io import load_model
from .published import ARCHITECTURES, DEFAULT
from .runtime import cache_dir


def random_checkpoint(path: str | os.PathLike, seed: int = 0, **model_args) -> Path:
    """Saves upstream MatterSim's M3Gnet with seeded random weights through its own
    ``Potential.save``: a genuine-format checkpoint (needs torch and ``mattersim``).

    Weights have a gain that keeps activations of order one, and the per-element
    scale and shift are random (shift in [-10, 0] eV, scale in [0.5, 2]), so that a
    wrong weight mapping cannot hide behind near-zero energies.

    Args:
        path: the ``.pth`` file to write (its directory is created).
        seed: torch's random seed.
        **model_args (int): upstream ``model_args`` (``num_blocks``, ``units``, ...).

    Returns:
        ``path``, as a ``Path``.
    """
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mattersim.forcefield.m3gnet.m3gnet import M3Gnet
        from mattersim.forcefield.potential import Potential

    torch.manual_seed(seed)
    model = M3Gnet(device="cpu", **model_args)
    with torch.no_grad():
        for name, p in model.named_parameters():
            fan_in = p.shape[1] if p.ndim == 2 else p.shape[0]
            if name.startswith("atom_embedding"):
                p.uniform_(-1.0, 1.0)  # one-hot input: fan-in of one
            else:
                p.normal_(0.0, 1.5 / math.sqrt(fan_in))
        model.normalizer.scale.uniform_(0.5, 2.0)
        model.normalizer.shift.uniform_(-10.0, 0.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Potential(model, device="cpu").save(str(path))
    return path


class Demo(NamedTuple):
    """A model for a demo, from [`demo_model`][jmattersim.testing.demo_model].

    Attributes:
        model: the [`Model`][jmattersim.Model].
        description: what it is, a sentence to show (random weights say so).
        checkpoint: its ``.pth`` file, or None if it has none.
    """

    model: Model
    description: str
    checkpoint: Path | None


def demo_model(name: str = DEFAULT, seed: int = 0) -> Demo:
    """The published checkpoint where it can be had, else a labelled random model.

    The published checkpoint ``name`` if it is cached or can be downloaded;
    else upstream's model of that configuration with seeded random weights,
    saved by upstream and converted by jmattersim (needs torch and mattersim);
    else jmattersim's own random initialisation.

    Args:
        name: a published name (see [`PUBLISHED`][jmattersim.PUBLISHED]).
        seed: random seed of the random weights.

    Returns:
        A [`Demo`][jmattersim.testing.Demo]: the model, a sentence saying what it
        is, and its checkpoint.
    """
    try:
        from .conversion import fetch_pretrained

        path = fetch_pretrained(name)
        return Demo(load_model(path), f"the published {name} checkpoint", path)
    except (ConnectionError, OSError, ValueError, ImportError) as e:
        reason = str(e).split(". ")[0]
    path = cache_dir() / "demo" / f"random-{name}-seed{seed}.pth"
    try:
        if not path.is_file():
            random_checkpoint(path, seed, **ARCHITECTURES[name])
        model = load_model(path)
        kind = "a genuine-format checkpoint with seeded random weights"
    except ImportError:
        model, path = init_model(M3GNetConfig(**ARCHITECTURES[name]), seed), None
        kind = "jmattersim's random initialisation"
    description = (
        f"{kind} in the {name} configuration ({reason}). Its energies, forces "
        "and stresses are NOT physics: they show the machinery."
    )
    return Demo(model, description, path)
