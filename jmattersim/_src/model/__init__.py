"""MatterSim's M3GNet in Flax."""

from .m3gnet import M3GNet, ModelInputs, init_params

__all__ = ["M3GNet", "ModelInputs", "init_params"]
