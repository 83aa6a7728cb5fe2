"""Fine-tuning against upstream, in the same session: the loss, its gradient and one
Adam step (``Potential.loss_calc``, torch autograd, ``torch.optim.Adam``), the
re-normalisation (``AtomScaling``), a fine-tuned model exported back to torch, and
learning on MPtrj frames."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mattersim")

import ase.io  # noqa: E402
from ase.units import GPa  # noqa: E402

import jmattersim  # noqa: E402
from jmattersim._src import dataset, train_step  # noqa: E402
from jmattersim._src.capacity import Capacity  # noqa: E402
from jmattersim._src.loss import LossSettings, pad_labels  # noqa: E402
from jmattersim._src.normalize import refit_normalizer  # noqa: E402
from jmattersim._src.padding import pad, total_counts  # noqa: E402
from jmattersim._src.torch_names import torch_key  # noqa: E402
from jmattersim.testing import upstream_potential  # noqa: E402

from conftest import MPTRJ, mptrj_frames  # noqa: E402

warnings.filterwarnings("ignore", module="mattersim")


def by_torch_name(tree) -> dict[str, np.ndarray]:
    """Flax leaves of ``params`` by upstream parameter name, in torch's layout."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = torch_key(("params", *(k.key for k in path)))
        value = np.asarray(leaf)
        out[name] = value.T if name.endswith("linear.weight") else value
    return out


@pytest.fixture(scope="module")
def frames():
    return mptrj_frames(40)[::5][:6]  # six frames, 2 to 60 atoms, three-element oxides among them


def upstream_batch(potential, frames):
    from mattersim.datasets.utils.build import build_dataloader

    energies = [a.get_potential_energy() for a in frames]
    forces = [a.get_forces() for a in frames]
    stresses = [a.get_stress(voigt=False) / GPa for a in frames]
    loader = build_dataloader(
        frames, energies, forces, stresses, batch_size=len(frames), **potential.model.model_args
    )
    return next(iter(loader))


def upstream_loss_and_grads(potential, batch, kind: str):
    from mattersim.forcefield.potential import batch_to_dict

    potential.model.train()
    out = potential.forward(batch_to_dict(batch, device="cpu"), True, True)
    loss = torch.nn.MSELoss() if kind == "mse" else torch.nn.HuberLoss(delta=0.01)
    values = potential.loss_calc(batch, out, loss, True, True, True, 1.0, 0.1)
    potential.optimizer.zero_grad()
    values[0].backward()
    grads = {n: p.grad.numpy().copy() for n, p in potential.model.named_parameters()}
    return [float(v.detach()) for v in values], grads


def ours(model, frames, kind: str):
    settings = LossSettings(kind=kind, delta=0.01, forces=True, stress=True)
    labelled = dataset.read_frames(frames, model.config, forces=True, stress=True)
    budget = Capacity.above(total_counts([f.graph for f in labelled]))
    batch = pad([f.graph for f in labelled], budget, model.config)
    labels = pad_labels(labelled, budget.nodes, budget.graphs, np.float32)
    trainable, frozen = train_step.split_params(model.params, False, False)
    return settings, trainable, frozen, batch, labels


@pytest.mark.parametrize("kind", ["mse", "huber"])
def test_loss_and_gradient_equal_upstreams(checkpoints, model, frames, kind):
    """Energy per atom, forces and stresses (GPa) all in the loss; gradients in
    every trainable parameter to 1e-4 relative (each tensor's norm)."""
    potential = upstream_potential(checkpoints["1M"])
    (up_loss, *up_mae), up_grads = upstream_loss_and_grads(
        potential, upstream_batch(potential, frames), kind
    )
    settings, trainable, frozen, batch, labels = ours(model, frames, kind)

    def objective(t, batch, labels):
        m = train_step.loss_fn(model.config, settings, t, frozen, batch, labels)
        return m.loss, m

    grads, metrics = jax.jit(jax.grad(objective, has_aux=True))(trainable, batch, labels)
    np.testing.assert_allclose(float(metrics.loss), up_loss, rtol=1e-4)
    np.testing.assert_allclose([float(v) for v in metrics[1:]], up_mae, rtol=1e-4)
    got = by_torch_name(grads)
    assert set(got) == set(up_grads)  # the same trainable set: no scale, no shift
    for name, want in up_grads.items():
        err = np.linalg.norm(got[name] - want) / np.linalg.norm(want)
        assert err < 1e-4, (name, err)


def test_one_adam_step_equals_upstreams(checkpoints, model, frames):
    """Gradient clipping to norm 1, then Adam (eps 1e-7), as upstream's train step."""
    potential = upstream_potential(checkpoints["1M"])
    _, _ = upstream_loss_and_grads(potential, upstream_batch(potential, frames), "mse")
    torch.nn.utils.clip_grad_norm_(potential.model.parameters(), 1.0, norm_type=2)
    potential.optimizer.step()  # Adam(lr=1e-3, eps=1e-7), upstream's Potential default
    want = {n: p.detach().numpy().copy() for n, p in potential.model.named_parameters()}

    settings, trainable, frozen, batch, labels = ours(model, frames, "mse")
    optim = train_step.OptimSettings(lr=1e-3)
    state = train_step.init_state(trainable, train_step.optimizer(optim))
    step = train_step.compiled_step(model.config, settings, optim, False, False)
    new, _ = step(state, frozen, jax.tree_util.tree_map(jnp.asarray, batch), labels)
    got = by_torch_name(new.params)
    before = by_torch_name(trainable)
    flat = lambda d: np.concatenate([d[n].ravel() for n in want])  # noqa: E731
    assert np.linalg.norm(flat(got) - flat(want)) / np.linalg.norm(flat(want)) < 1e-6
    moved = np.linalg.norm(flat(got) - flat(before)) / np.linalg.norm(flat(before))
    assert moved > 1e-4  # the step did move the parameters


def test_re_normalisation_equals_upstreams_atom_scaling(model):
    from mattersim.forcefield.m3gnet.scaling import AtomScaling

    atoms = ase.io.read(MPTRJ, index=":200")
    energies = [a.get_potential_energy() for a in atoms]
    forces = [a.get_forces() for a in atoms]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        up = AtomScaling(
            atoms=atoms,
            total_energy=energies,
            forces=forces,
            scale_key="per_species_forces_rms",
            shift_key="per_species_energy_mean_linear_reg",
            device="cpu",
        )
    labelled = dataset.read_frames(atoms, model.config, forces=True)
    with pytest.warns(UserWarning, match="absent from the training data"):
        scale, shift = refit_normalizer(labelled)
    np.testing.assert_allclose(scale, up.scale.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(shift, up.shift.numpy(), rtol=1e-5, atol=1e-5)
    assert np.count_nonzero(shift) > 10  # the fit is not trivially zero


def test_fine_tuned_model_round_trips_through_upstream(small_model, tmp_path):
    """Re-normalised, with trainable scale and shift: exported with --to-torch,
    upstream's own loader predicts what jmattersim predicts, and converting it back
    gives identical parameters."""
    from convert_weights.cli import main as convert
    from jmattersim._src.conversion import convert_checkpoint

    from upstream import predict

    frames = ase.io.read(MPTRJ, index=":24")
    result = jmattersim.train.train(
        small_model,
        frames[:16],
        frames[16:],
        out=tmp_path / "run",
        epochs=2,
        batch_size=8,
        re_normalize=True,
        trainable_scale=True,
        trainable_shift=True,
        progress=False,
    )
    tuned = result.model
    norm = tuned.params["params"]["normalizer"]
    old = small_model.params["params"]["normalizer"]
    assert not np.allclose(norm["shift"], old["shift"]) and not np.allclose(
        norm["scale"], old["scale"]
    )
    pth = tmp_path / "tuned.pth"
    assert convert(["--to-torch", str(tmp_path / "run" / "best_model"), str(pth)]) == 0
    back = convert_checkpoint(pth)
    for a, b in zip(
        jax.tree_util.tree_leaves(back.params), jax.tree_util.tree_leaves(tuned.params), strict=True
    ):
        # exact: export and conversion back copy float32 tensors, no arithmetic
        assert np.array_equal(np.asarray(a).reshape(np.shape(b)), np.asarray(b))
    potential = upstream_potential(pth)
    tests = [frames[20], frames[23]]
    for atoms, mine in zip(tests, jmattersim.evaluate(tuned, tests), strict=True):
        ref = predict(potential, atoms)
        assert abs(mine.energy - ref["energy"]) / len(atoms) < 1e-5
        np.testing.assert_allclose(mine.forces, ref["forces"], atol=1e-4)
        np.testing.assert_allclose(mine.stress_gpa, ref["stress_gpa"], atol=1e-3)


@pytest.mark.long  # 12 to 15 minutes on a 2-core CPU: outside .ci/run (pytest -m long)
def test_fine_tuning_learns_mptrj(model):
    """The random-weight 1M model, 800 frames drawn at random (seed 0) from MPtrj, 100
    held back: two epochs lower the validation energy and force MAE."""
    atoms = ase.io.read(MPTRJ, index=":")
    order = np.random.default_rng(0).permutation(len(atoms))
    train = [atoms[i] for i in order[:800]]
    valid = [atoms[i] for i in order[800:900]]

    def maes(m):
        results = jmattersim.evaluate(m, valid)
        pairs = list(zip(results, valid, strict=True))
        e = np.mean([abs(r.energy - a.get_potential_energy()) / len(a) for r, a in pairs])
        f = np.mean(np.concatenate([np.abs(r.forces - a.get_forces()).ravel() for r, a in pairs]))
        return e, f

    mae_e0, mae_f0 = maes(model)
    result = jmattersim.train.train(model, train, valid, epochs=2, progress=False, lr=1e-3)
    mae_e, mae_f = maes(result.model)
    print(
        f"validation MAE before {mae_e0:.4f} eV/atom, {mae_f0:.4f} eV/A; "
        f"after {mae_e:.4f}, {mae_f:.4f}"
    )
    assert mae_e < 0.8 * mae_e0
    assert mae_f < 0.8 * mae_f0
