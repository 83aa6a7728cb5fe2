"""``load_model``: a model directory, a MatterSim ``.pth`` checkpoint, or a published name.

Above both the on-disk format (:mod:`jmattersim.checkpoint`) and the conversion
(``convert_weights``, which needs torch only for ``.pth`` files).
"""

from __future__ import annotations

import os
from pathlib import Path

from .checkpoint import Model, read_model
from .published import PUBLISHED, canonical_name
from .runtime import cache_dir


def load_model(path: str | os.PathLike) -> Model:
    """Loads a model: a directory written by ``jmattersim-convert``, a MatterSim
    ``.pth`` checkpoint (converted in memory; needs torch), or a published name
    (``mattersim-v1.0.0-1M``/``-5M``: converted once into ``~/.cache/jmattersim``)."""
    if canonical_name(str(path)):
        path = pretrained(str(path))
    path = Path(path).expanduser()
    if path.is_file():
        from convert_weights.convert import convert_checkpoint

        return convert_checkpoint(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: expected a jmattersim model directory, a MatterSim .pth "
            f"checkpoint or one of {', '.join(PUBLISHED)}; convert a MatterSim checkpoint "
            "with `jmattersim-convert SRC OUT` first"
        )
    return read_model(path)


def pretrained(name: str) -> Path:
    """Directory of the converted published checkpoint ``name``, converting it
    (and downloading the .pth where a network is) on first use."""
    canonical = canonical_name(name)
    if canonical is None:
        raise ValueError(f"{name} is not a published model ({', '.join(PUBLISHED)})")
    target = cache_dir() / canonical
    if (target / "config.json").is_file():
        return target
    from convert_weights.convert import convert_file, fetch_pretrained

    convert_file(fetch_pretrained(canonical), target, overwrite=True)
    return target
