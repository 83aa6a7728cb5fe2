"""Array and dtype conventions shared by every module."""

from __future__ import annotations

import jax
import numpy as np

Array = jax.Array


def default_float() -> np.dtype:
    """float64 when ``jax_enable_x64`` is on, float32 otherwise (read at call time)."""
    return np.dtype(np.float64 if jax.config.read("jax_enable_x64") else np.float32)
