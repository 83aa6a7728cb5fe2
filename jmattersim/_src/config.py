"""Model configuration, read from a checkpoint's ``model_args``."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

# Entries of upstream ``model_args`` that change nothing in the forward pass.
_IGNORED_MODEL_ARGS = frozenset({"device", "gradient_checkpointing"})


@dataclasses.dataclass(frozen=True)
class M3GNetConfig:
    """Hyper-parameters of MatterSim's M3GNet (upstream ``M3Gnet.model_args``).

    Defaults are upstream's constructor defaults; published checkpoints always
    carry their own values, so read them with
    [`from_model_args`][jmattersim.M3GNetConfig.from_model_args].

    Attributes:
        num_blocks: interaction blocks (1M: 3, 5M: 4).
        units: hidden width (1M: 128, 5M: 256).
        max_l: spherical-harmonic degrees of the three-body basis (1..4).
        max_n: radial functions of the three-body basis (1..4).
        cutoff: two-body cutoff, Å.
        threebody_cutoff: three-body cutoff, Å (at most ``cutoff``).
        max_z: largest atomic number; atom types are one-hot over 0..max_z.
    """

    num_blocks: int = 4
    units: int = 128
    max_l: int = 4
    max_n: int = 4
    cutoff: float = 5.0  # two-body cutoff, Å
    threebody_cutoff: float = 4.0  # three-body cutoff, Å
    max_z: int = 94  # atom types are one-hot over 0..max_z

    def __post_init__(self) -> None:
        if not 1 <= self.max_l <= 4 or not 1 <= self.max_n <= 4:
            raise ValueError(
                f"MatterSim supports 1 <= max_l, max_n <= 4, got max_l={self.max_l}, "
                f"max_n={self.max_n}"
            )
        if self.threebody_cutoff > self.cutoff:
            raise ValueError("threebody_cutoff must not exceed cutoff")

    @property
    def num_species(self) -> int:
        """Width of the atom-type axis: elements 0..max_z."""
        return self.max_z + 1

    @classmethod
    def from_model_args(cls, model_args: Mapping[str, Any]) -> M3GNetConfig:
        """Builds the config from upstream ``model_args``.

        Entries that do not change the model (``device``,
        ``gradient_checkpointing``) are accepted; other unknown entries are
        ignored with a warning.

        Args:
            model_args: upstream's ``model_args`` mapping (from a checkpoint).

        Returns:
            The config.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(model_args) - names - _IGNORED_MODEL_ARGS
        if unknown:  # upstream's M3Gnet swallows them in **kwargs; so do we, aloud
            warnings.warn(f"ignoring unknown model_args entries: {sorted(unknown)}", stacklevel=2)
        kwargs = {k: v for k, v in model_args.items() if k in names}
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        return cls(**{k: (float(v) if types[k] == "float" else int(v)) for k, v in kwargs.items()})

    def to_dict(self) -> dict[str, Any]:
        """The config as upstream ``model_args`` (a plain dict).

        Returns:
            ``{"num_blocks": ..., "units": ..., ...}``.
        """
        return dataclasses.asdict(self)
