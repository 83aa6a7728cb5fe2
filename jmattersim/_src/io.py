"""``load_model``: a model directory, a MatterSim ``.pth`` checkpoint, or a published name;
``load_committee``: a committee directory, or several models stacked.

Above both the on-disk format (:mod:`jmattersim._src.checkpoint`) and the conversion
(:mod:`jmattersim._src.conversion`, which needs torch only for ``.pth`` files).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .checkpoint import Model, read_model
from .committee import Committee, committee_size, read_committee, stack_models
from .published import PUBLISHED, canonical_name
from .runtime import cache_dir


def load_model(path: str | os.PathLike) -> Model:
    """Loads a model from a directory, a MatterSim checkpoint or a published name.

    Args:
        path: a directory written by ``jmattersim-convert`` (or
            [`save_model`][jmattersim.save_model]); a MatterSim ``.pth``
            checkpoint (converted in memory; needs torch); or a published name
            (``mattersim-v1.0.0-1M`` or ``-5M``, see
            [`PUBLISHED`][jmattersim.PUBLISHED]), downloaded where upstream
            downloads it and converted once into ``~/.cache/jmattersim``
            (``$JMATTERSIM_CACHE``).

    Returns:
        The [`Model`][jmattersim.Model].

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConnectionError: a published checkpoint is neither cached nor downloadable
            (pass a local ``.pth`` instead).
        ValueError: the directory or checkpoint is corrupt or incomplete, or is a
            committee (load it with [`load_committee`][jmattersim.train.load_committee]).
    """
    if canonical_name(str(path)):
        path = pretrained(str(path))
    path = Path(path).expanduser()
    if path.is_file():
        from .conversion import convert_checkpoint

        return convert_checkpoint(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: expected a jmattersim model directory, a MatterSim .pth "
            f"checkpoint or one of {', '.join(PUBLISHED)}; convert a MatterSim checkpoint "
            "with `jmattersim-convert SRC OUT` first"
        )
    return read_model(path)


def load_committee(path: str | os.PathLike | Sequence[str | os.PathLike | Model]) -> Committee:
    """Loads a committee: a directory written by
    [`save_committee`][jmattersim.train.save_committee], or several models stacked.

    Args:
        path: a committee directory; or a list of models (each anything
            [`load_model`][jmattersim.load_model] takes, or a
            [`Model`][jmattersim.Model]) of one architecture, stacked in order.

    Returns:
        The [`Committee`][jmattersim.train.Committee].

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: the directory is corrupt, incomplete or a single model, or
            the models' architectures differ.
    """
    if isinstance(path, (str, os.PathLike)):
        return read_committee(path)
    return stack_models([m if isinstance(m, Model) else load_model(m) for m in path])


def load_model_or_committee(path: str | os.PathLike) -> Model | Committee:
    """A committee if ``path`` is a committee directory, else
    [`load_model`][jmattersim.load_model]``(path)`` (for the entry points)."""
    if not canonical_name(str(path)) and committee_size(path) is not None:
        return read_committee(path)
    return load_model(path)


def pretrained(name: str) -> Path:
    """Directory of the converted published checkpoint ``name``, converting it
    (and downloading the .pth where a network is) on first use."""
    canonical = canonical_name(name)
    if canonical is None:
        raise ValueError(f"{name} is not a published model ({', '.join(PUBLISHED)})")
    target = cache_dir() / canonical
    if (target / "config.json").is_file():
        return target
    from .conversion import convert_file, fetch_pretrained

    convert_file(fetch_pretrained(canonical), target, overwrite=True)
    return target
