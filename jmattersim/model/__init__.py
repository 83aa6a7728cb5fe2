"""Flax M3GNet and its bases."""

from .m3gnet import M3GNet, ModelInputs

__all__ = ["M3GNet", "ModelInputs"]
