"""A jmattersim model back to a MatterSim ``.pth`` checkpoint (the inverse of
:mod:`jmattersim._src.conversion`).

The file is what upstream's ``Potential.save`` writes, less the training state:
``{"model_name": "m3gnet", "model": state_dict, "model_args": {...},
"last_epoch": -1, "validation_metrics": {"loss": 0.0}, "description": ...}``.
Upstream's ``Potential.from_checkpoint`` (and ``MatterSimCalculator(load_path=...)``)
load it; its missing ``optimizer``, ``scheduler`` and ``ema`` are started afresh,
as upstream does for any checkpoint without them. It holds only tensors and plain
containers, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jmattersim._src.checkpoint import Model, check_params
from jmattersim._src.config import M3GNetConfig
from jmattersim._src.conversion import ConversionError
from jmattersim._src.torch_names import flax_shapes, is_transposed, torch_key

# The order of upstream's ``M3Gnet.get_model_args()``.
_MODEL_ARGS = ("num_blocks", "units", "max_l", "max_n", "cutoff", "max_z", "threebody_cutoff")


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ConversionError(
            "writing .pth checkpoints needs torch: pip install 'jmattersim[convert]'"
        ) from e
    return torch


def upstream_model_args(config: M3GNetConfig) -> dict[str, Any]:
    """``config`` as upstream's ``M3Gnet.get_model_args()`` stores it (same keys,
    order and Python types)."""
    args = config.to_dict()
    return {k: float(args[k]) if k.endswith("cutoff") else int(args[k]) for k in _MODEL_ARGS}


def upstream_shapes(config: M3GNetConfig) -> dict[str, tuple[int, ...]]:
    """Every key of upstream's ``M3Gnet(**model_args).state_dict()`` with its shape.

    Built from upstream's own model where ``mattersim`` is installed; without it,
    from the name table (which the tests check equals upstream's keys)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from mattersim.forcefield.m3gnet.m3gnet import M3Gnet
    except ImportError:
        return {
            torch_key(path): shape[::-1] if is_transposed(path) else shape
            for path, shape in flax_shapes(config).items()
        }
    with warnings.catch_warnings():  # about 0.1 s for the 5M architecture
        warnings.simplefilter("ignore")
        reference = M3Gnet(device="cpu", **upstream_model_args(config)).state_dict()
    return {k: tuple(v.shape) for k, v in reference.items()}


def params_to_state_dict(params: Any, config: M3GNetConfig) -> dict[str, Any]:
    """Flax variables to upstream's ``state_dict``: the inverse of
    :func:`jmattersim._src.conversion.state_dict_to_params`.

    Kernels are transposed back to torch's (out, in); every tensor is float32 and
    contiguous. Every key of upstream's ``M3Gnet(**model_args).state_dict()`` is
    written: upstream loads with ``strict=False``, so a missing key would silently
    keep its random initial value; that raises here instead.

    Args:
        params: ``{"params": ..., "constants": ...}``, as in ``Model.params``.
        config: the architecture.

    Returns:
        ``{torch key: torch.Tensor}``, in upstream's key order.

    Raises:
        ConversionError: a variable is missing, has the wrong shape or is not
            finite, or upstream's model has a key that nothing here fills.
    """
    torch = _torch()
    try:
        check_params(params, config, "model")
    except ValueError as e:
        raise ConversionError(str(e)) from e
    tensors: dict[str, Any] = {}
    for path in flax_shapes(config):
        node = params
        for part in path:
            node = node[part]
        value = np.asarray(jax.device_get(node), dtype=np.float32)
        if is_transposed(path):
            value = value.T
        tensors[torch_key(path)] = value
    want = upstream_shapes(config)
    missing = [k for k in want if k not in tensors]
    if missing:
        raise ConversionError(
            f"upstream's M3Gnet for {config} has state_dict keys that the model does not "
            f"provide: {', '.join(missing)} (upstream would leave them random)"
        )
    extra = sorted(set(tensors) - set(want))
    if extra:
        raise ConversionError(f"keys that upstream's M3Gnet for {config} lacks: {extra}")
    state: dict[str, Any] = {}
    for key, shape in want.items():  # upstream's order and shapes (a scalar buffer: ())
        value = tensors[key]
        if value.size != int(np.prod(shape, dtype=int)):
            raise ConversionError(
                f"'{key}' has shape {value.shape}, upstream expects {shape} for {config}"
            )
        # a C-ordered copy (np.ascontiguousarray would turn a 0-d buffer into shape (1,))
        state[key] = torch.from_numpy(value.reshape(shape).copy(order="C"))
    return state


def _describe(model: Model) -> str:
    source = model.source or {}
    origin = source.get("checkpoint") or ", ".join(f"{k}={v}" for k, v in source.items())
    return f"exported by jmattersim ({model.config}); source: {origin or 'unknown'}"


def export_checkpoint(
    model: Model,
    out_path: str | os.PathLike,
    *,
    overwrite: bool = False,
    description: str | None = None,
) -> Path:
    """Writes ``model`` as an upstream MatterSim ``.pth`` checkpoint, atomically.

    The file is written beside ``out_path`` and renamed into place: a failed or
    interrupted write leaves no file (and an existing one untouched).

    Args:
        model: the [`Model`][jmattersim.Model] (e.g. from ``load_model``, or
            fine-tuned).
        out_path: the ``.pth`` file to write.
        overwrite: replace an existing ``out_path``.
        description: the checkpoint's ``description``; by default, where the
            weights came from.

    Returns:
        ``out_path``, as a ``Path``.

    Raises:
        FileExistsError: ``out_path`` exists and ``overwrite`` is False.
        ConversionError: the parameters do not fit the config (see
            :func:`params_to_state_dict`).
    """
    torch = _torch()
    out = Path(out_path).expanduser().absolute()
    if out.is_dir():
        raise IsADirectoryError(f"{out} is a directory; expected a .pth file name")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    checkpoint = {
        "model_name": "m3gnet",
        "model": params_to_state_dict(model.params, model.config),
        "model_args": upstream_model_args(model.config),
        "last_epoch": -1,
        "validation_metrics": {"loss": 0.0},
        "description": _describe(model) if description is None else str(description),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a file's usual mode
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return Path(out_path)
