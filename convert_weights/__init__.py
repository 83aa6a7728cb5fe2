"""MatterSim PyTorch checkpoints to jmattersim (Orbax) models."""
