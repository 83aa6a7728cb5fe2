"""MatterSim ``.pth`` checkpoint to a jmattersim model (Orbax + config), the conversion
that ``load_model`` and the ``convert_weights`` command line share.

The checkpoint is read with ``torch.load(weights_only=True)``: tensors and
plain containers only, so a crafted pickle cannot run code.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import urllib.error
import urllib.request
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from .checkpoint import Model, atomic_directory, save_model
from .config import M3GNetConfig
from .model import basis
from .published import UPSTREAM_CACHE, UPSTREAM_URL, canonical_name
from .runtime import cache_dir
from .torch_names import flax_shapes, is_transposed, torch_key


class ConversionError(ValueError):
    """The checkpoint cannot be converted; the message names the cause."""


def _first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Loads a MatterSim checkpoint without running pickled code."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ConversionError(
            "reading .pth checkpoints needs torch: pip install 'jmattersim[convert]'"
        ) from e
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if not found:
            raise ConversionError(
                f"cannot read {path} as a MatterSim checkpoint (torch.load "
                f"with weights_only=True failed: {_first_line(e)})"
            ) from e
        raise ConversionError(
            f"refusing {path}: it holds a pickled reference to {found.group(1)}, which is not "
            "a tensor or a plain value (loading it unsafely would run code); a MatterSim "
            "checkpoint holds only weights and settings. Nothing was loaded."
        ) from e
    except Exception as e:
        raise ConversionError(
            f"cannot read {path} as a MatterSim checkpoint (torch.load with weights_only=True "
            f"failed: {_first_line(e)})"
        ) from e
    if not isinstance(ckpt, Mapping) or "model" not in ckpt or "model_args" not in ckpt:
        raise ConversionError(
            f"{path} is not a MatterSim checkpoint: expected a dict with 'model' and 'model_args'"
        )
    name = ckpt.get("model_name", "m3gnet")
    if str(name).lower() != "m3gnet":
        raise ConversionError(f"{path} holds a '{name}' model; only m3gnet can be converted")
    if not isinstance(ckpt["model_args"], Mapping):
        raise ConversionError(
            f"{path}: 'model_args' is a {type(ckpt['model_args']).__name__}, "
            "expected a dict of M3Gnet arguments"
        )
    state = ckpt["model"]
    if not isinstance(state, Mapping):
        raise ConversionError(
            f"{path}: 'model' is a {type(state).__name__}, expected a "
            "state_dict (a dict of tensors)"
        )
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise ConversionError(
                f"{path}: state_dict entry '{key}' is not a floating-point "
                f"tensor ({type(value).__name__})"
            )
    return dict(ckpt)


def state_dict_to_params(
    state_dict: Mapping[str, Any], config: M3GNetConfig, strict: bool = False
) -> dict:
    """Maps upstream tensors to Flax variables, checking names, shapes and buffers."""
    arrays = {
        k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
        for k, v in state_dict.items()
    }
    params: dict = {}
    used = set()
    for path, shape in flax_shapes(config).items():
        key = torch_key(path)
        if key not in arrays:
            raise ConversionError(f"checkpoint misses parameter '{key}' (for {'/'.join(path)})")
        value = arrays[key].T if is_transposed(path) else arrays[key]
        if tuple(value.shape) != shape:
            want = shape[::-1] if is_transposed(path) else shape
            raise ConversionError(
                f"parameter '{key}' has shape {tuple(arrays[key].shape)}, expected {want} "
                f"for {config}"
            )
        if not np.isfinite(value).all():
            raise ConversionError(f"parameter '{key}' holds NaN or infinite values")
        used.add(key)
        node = params
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = np.ascontiguousarray(value, dtype=np.float32)
    extra = sorted(set(arrays) - used)
    if extra:
        msg = f"checkpoint keys that the model does not use: {', '.join(extra)}"
        if strict:
            raise ConversionError(msg + " (--strict)")
        warnings.warn(
            msg + " (ignored, as upstream's load_state_dict(strict=False) does)", stacklevel=2
        )
    _check_buffers(params["constants"], config)
    return params


def _check_buffers(constants: dict, config: M3GNetConfig) -> None:
    """The stored basis buffers must be the ones this config computes (float32)."""
    expected = {
        "rbf": basis.smooth_bessel_constants(config.cutoff, config.max_n),
        "sbf": basis.spherical_basis_constants(config.cutoff),
    }
    for module, values in expected.items():
        for name, want in values.items():
            got = constants[module][name]
            if not np.allclose(got, want, rtol=1e-5, atol=1e-6):
                raise ConversionError(
                    f"stored buffer '{module}.{name}' differs from the basis of {config}: "
                    f"max |diff| {np.max(np.abs(got - want)):.3g}"
                )


def convert_checkpoint(path: str | os.PathLike, strict: bool = False) -> Model:
    """Reads and converts a ``.pth`` checkpoint in memory."""
    ckpt = read_checkpoint(path)
    try:
        config = M3GNetConfig.from_model_args(ckpt["model_args"])
    except (TypeError, ValueError) as e:
        raise ConversionError(f"bad model_args in {path}: {e}") from e
    try:
        params = state_dict_to_params(ckpt["model"], config, strict=strict)
    except ConversionError as e:
        raise ConversionError(f"{path}: {e}") from e
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    source = {
        "checkpoint": Path(path).name,
        "sha256": digest,
        "description": str(ckpt.get("description", "")),
    }
    return Model(config, jax.tree_util.tree_map(np.asarray, params), source)


def convert_file(
    src: str | os.PathLike, out: str | os.PathLike, strict: bool = False, overwrite: bool = False
) -> Model:
    """Converts ``src`` (.pth) into the model directory ``out``, atomically."""
    model = convert_checkpoint(src, strict=strict)
    save_model(model, out, overwrite=overwrite)
    return model


def fetch_pretrained(name: str) -> Path:
    """Local path of the published checkpoint ``name``: upstream's cache, ours,
    or a download from where upstream downloads it."""
    canonical = canonical_name(name)
    if canonical is None:
        raise ValueError(f"{name} is not a published MatterSim checkpoint")
    filename = canonical + ".pth"
    for candidate in (UPSTREAM_CACHE / filename, cache_dir() / filename):
        if candidate.is_file():
            return candidate
    target = cache_dir() / filename
    try:
        with urllib.request.urlopen(UPSTREAM_URL + filename, timeout=60) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as e:
        raise ConnectionError(
            f"cannot download {filename} from {UPSTREAM_URL} ({e}). Without a network, pass "
            f"a local path to the .pth file instead of the name '{name}'."
        ) from e
    with atomic_directory(target.with_suffix(".download"), overwrite=True) as tmp:
        (tmp / filename).write_bytes(data)
        read_checkpoint(tmp / filename)  # a broken download must not be cached
        os.replace(tmp / filename, target)
    return target
