"""One fine-tuning run in this process, as a user runs it (imports included):
``epochs`` passes over labelled frames, batches of 16, energy + forces + stresses,
no validation set, nothing written.

    python benchmarks/train_epoch.py jm|up FRAMES.extxyz MODEL [--epochs N] [--max-epochs K]
        [--remat]

jm: ``jmattersim.train.train(model, FRAMES, valid_fraction=0, out=None, epochs=..., batch_size=16,
include_forces=True, include_stresses=True, progress=False)`` (its defaults
otherwise: Huber loss, delta 0.01, as upstream's ``finetune_mattersim.py``).
up: upstream's ``finetune_mattersim.py`` without torch.distributed: read the
frames, labels (stress in GPa), ``build_dataloader(..., batch_size=16,
shuffle=True)``, ``Potential.from_checkpoint(..., load_training_state=False,
lr=2e-4)``, ``train_model(loader, None, loss=HuberLoss(delta=0.01), ...)``.
MODEL is a jmattersim model directory (jm) or a .pth checkpoint (up). Prints one
JSON line: the seconds of each epoch (``train_one_epoch`` upstream,
``TrainResult.history[...]["seconds"]`` here), and of the training call.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

START = time.perf_counter()
warnings.filterwarnings("ignore")
BATCH = 16


def run_jm(args) -> dict:
    import jmattersim

    model = jmattersim.load_model(args.model)
    t = time.perf_counter()
    result = jmattersim.train.train(
        model,
        args.frames,
        None,
        valid_fraction=0.0,
        out=None,
        epochs=args.epochs,
        max_epochs=args.max_epochs,
        batch_size=BATCH,
        include_forces=True,
        include_stresses=True,
        progress=False,
        remat=args.remat,
    )
    return {
        "train": time.perf_counter() - t,
        "epochs": [r["seconds"] for r in result.history],
        "loss": [r["train_loss"] for r in result.history],
    }


def run_up(args) -> dict:
    import ase.io
    import torch
    from ase.units import GPa
    from mattersim.datasets.utils.build import build_dataloader
    from mattersim.forcefield.potential import Potential

    torch.manual_seed(42)
    frames = ase.io.read(args.frames, index=":")
    t = time.perf_counter()
    energies = [a.get_potential_energy() for a in frames]
    forces = [a.get_forces() for a in frames]
    stresses = [a.get_stress(voigt=False) / GPa for a in frames]
    loader = build_dataloader(
        frames, energies, forces, stresses, batch_size=BATCH, shuffle=True, model_type="m3gnet"
    )
    graphs = time.perf_counter() - t
    potential = Potential.from_checkpoint(
        args.model, device="cpu", load_training_state=False, lr=2e-4
    )
    epochs: list[float] = []
    losses: list[float] = []
    one_epoch = potential.train_one_epoch

    def timed(*a, **k):
        s = time.perf_counter()
        out = one_epoch(*a, **k)
        epochs.append(time.perf_counter() - s)
        losses.append(out[0])
        return out

    potential.train_one_epoch = timed
    t = time.perf_counter()
    potential.train_model(
        loader,
        None,
        loss=torch.nn.HuberLoss(delta=0.01),
        include_forces=True,
        include_stresses=True,
        epochs=args.epochs,
        save_checkpoint=False,
    )
    return {"train": time.perf_counter() - t, "graphs": graphs, "epochs": epochs, "loss": losses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("impl", choices=["jm", "up"])
    parser.add_argument("frames")
    parser.add_argument("model", help="jmattersim model directory, or upstream .pth (up)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--remat", action="store_true", help="jm: remat=True")
    parser.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        help="jm: stop after this many (a long run's first epochs: its padding budget)",
    )
    args = parser.parse_args()
    out = run_jm(args) if args.impl == "jm" else run_up(args)
    print(json.dumps({**out, "total": time.perf_counter() - START}))


if __name__ == "__main__":
    main()
