"""MatterSim's published checkpoints: names, architectures and where upstream keeps them."""

from __future__ import annotations

from pathlib import Path

# name -> upstream model_args that differ from M3GNetConfig's defaults
ARCHITECTURES: dict[str, dict[str, int]] = {
    "mattersim-v1.0.0-1M": {"num_blocks": 3, "units": 128},
    "mattersim-v1.0.0-5M": {"num_blocks": 4, "units": 256},
}
PUBLISHED = tuple(ARCHITECTURES)
"""The published checkpoint names, ``("mattersim-v1.0.0-1M", "mattersim-v1.0.0-5M")``:
[`load_model`][jmattersim.load_model] and ``jmattersim-convert`` take them (any case,
with or without ``.pth``)."""
DEFAULT = "mattersim-v1.0.0-1M"
# Where upstream MatterSim downloads its checkpoints from, and where it keeps them.
UPSTREAM_URL = "https://raw.githubusercontent.com/microsoft/mattersim/main/pretrained_models/"
UPSTREAM_CACHE = Path("~/.local/mattersim/pretrained_models").expanduser()


def canonical_name(name: str) -> str | None:
    """The published name ``name`` stands for (any case, with or without .pth), or None."""
    return {p.lower(): p for p in PUBLISHED}.get(str(name).removesuffix(".pth").lower())
