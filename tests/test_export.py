"""``jmattersim-convert --to-torch``: a jmattersim model back to upstream's checkpoint
format, loaded by upstream MatterSim's own ``Potential.from_checkpoint`` and
predicting what jmattersim predicts (the tolerances of tests/test_parity.py)."""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
upstream = pytest.importorskip("upstream")

import jmattersim  # noqa: E402
from convert_weights.cli import main  # noqa: E402
from convert_weights.export import (  # noqa: E402
    export_checkpoint,
    params_to_state_dict,
    upstream_model_args,
)
from jmattersim._src.conversion import ConversionError, convert_checkpoint  # noqa: E402
from jmattersim.testing import upstream_potential  # noqa: E402

from conftest import mptrj_frames, small_cell  # noqa: E402

CONFIGS = ["1M", "5M"]


@pytest.fixture(scope="module")
def frames():
    return [*mptrj_frames(3), small_cell()]


@pytest.fixture(scope="module")
def exported(converted, tmp_path_factory) -> dict:
    """The converted models exported back with the CLI."""
    root = tmp_path_factory.mktemp("exported")
    out = {}
    for name in CONFIGS:
        out[name] = root / f"{name}.pth"
        assert main(["--to-torch", str(converted[name]), str(out[name])]) == 0
    return out


@pytest.fixture(scope="module")
def potentials(exported) -> dict:
    return {name: upstream_potential(path) for name, path in exported.items()}


def worst_errors(model, potential, frames) -> np.ndarray:
    """max over frames of (|dE| per atom, max |dF|, max |dsigma| GPa), asserting the
    float32 tolerances of tests/test_parity.py on each frame."""
    worst = np.zeros(3)
    for atoms, res in zip(frames, jmattersim.evaluate(model, frames), strict=True):
        ref = upstream.predict(potential, atoms)
        errors = np.array(
            [
                abs(res.energy - ref["energy"]) / len(atoms),
                np.abs(res.forces - ref["forces"]).max(),
                np.abs(res.stress_gpa - ref["stress_gpa"]).max(),
            ]
        )
        key = atoms.get_chemical_formula()
        assert errors[0] <= 1e-5, f"{key}: |dE| = {errors[0]:.2e} eV/atom"
        assert errors[1] <= 1e-4, f"{key}: max |dF| = {errors[1]:.2e} eV/A"
        assert errors[2] <= 1e-3, f"{key}: max |dsigma| = {errors[2]:.2e} GPa"
        worst = np.maximum(worst, errors)
    return worst


def assert_same_params(a, b):
    flat_a, tree_a = jax.tree_util.tree_flatten_with_path(a)
    flat_b, tree_b = jax.tree_util.tree_flatten_with_path(b)
    assert tree_a == tree_b
    for (path, x), (_, y) in zip(flat_a, flat_b, strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype == np.float32, jax.tree_util.keystr(path)
        # exact: a round trip of stored float32 parameters (copies, no arithmetic)
        assert np.array_equal(x, y), jax.tree_util.keystr(path)


@pytest.mark.parametrize("name", CONFIGS)
def test_upstream_predicts_what_jmattersim_predicts(name, converted, potentials, frames):
    model = jmattersim.load_model(converted[name])
    worst = worst_errors(model, potentials[name], frames)
    print(
        f"\n{name} exported: dE {worst[0]:.2e} eV/atom, dF {worst[1]:.2e} eV/A, "
        f"dsigma {worst[2]:.2e} GPa over {len(frames)} structures"
    )


@pytest.mark.parametrize("name", CONFIGS)
def test_round_trip_is_exact(name, checkpoints, converted, exported):
    """.pth -> directory -> .pth -> params: every leaf bit for bit; and the exported
    file holds upstream's own tensors, keys, shapes and model_args."""
    model = jmattersim.load_model(converted[name])
    back = convert_checkpoint(exported[name], strict=True)
    assert back.config == model.config
    assert_same_params(back.params, model.params)

    ours = torch.load(exported[name], weights_only=True)
    genuine = torch.load(checkpoints[name], weights_only=True)
    assert list(ours["model"]) == list(genuine["model"])
    for key, value in genuine["model"].items():
        got = ours["model"][key]
        assert got.shape == value.shape and got.dtype == torch.float32, key
        assert got.is_contiguous() and torch.equal(got, value), key
    assert ours["model_args"] == genuine["model_args"]
    assert [type(v) for v in ours["model_args"].values()] == [
        type(v) for v in genuine["model_args"].values()
    ]
    assert ours["model_name"] == "m3gnet" and ours["last_epoch"] == -1
    assert ours["validation_metrics"] == {"loss": 0.0}
    assert f"random-{name}.pth" in ours["description"]


def test_finetuned_normaliser_and_weights_travel(model, frames, tmp_path):
    """A model whose normaliser and weights moved (as fine-tuning moves them), exported
    and loaded the way upstream users load it (MatterSimCalculator(load_path=...),
    training state on): upstream predicts what jmattersim predicts."""
    from mattersim.forcefield.potential import MatterSimCalculator

    rng = np.random.default_rng(42)
    params = jax.tree_util.tree_map(np.array, model.params)  # a writable copy
    norm = params["params"]["normalizer"]
    norm["scale"] = rng.uniform(0.3, 3.0, norm["scale"].shape).astype(np.float32)
    norm["shift"] = rng.uniform(-8.0, 2.0, norm["shift"].shape).astype(np.float32)
    block = params["params"]["graph_conv_1"]["gated_mlp_atom"]["g_0"]
    block["kernel"] += rng.normal(0.0, 0.05, block["kernel"].shape).astype(np.float32)
    final = params["params"]["final"]["g_2"]
    final["bias"] += np.float32(0.3)
    tuned = dataclasses.replace(model, params=params)

    path = export_checkpoint(tuned, tmp_path / "tuned.pth", description="fine-tuned")
    assert torch.load(path, weights_only=True)["description"] == "fine-tuned"
    potential = MatterSimCalculator(load_path=str(path), device="cpu").potential
    scale = potential.model.normalizer.scale.detach().numpy()
    # exact: the exported buffer is a copy of the parameter
    np.testing.assert_array_equal(scale, norm["scale"])
    worst = worst_errors(tuned, potential, frames)
    print(
        f"\nfine-tuned-like 1M exported: dE {worst[0]:.2e} eV/atom, dF {worst[1]:.2e} eV/A, "
        f"dsigma {worst[2]:.2e} GPa"
    )
    before = jmattersim.evaluate(model, frames[:1])[0].energy
    after = jmattersim.evaluate(tuned, frames[:1])[0].energy
    assert abs(after - before) > 0.1  # the change is real, and it travelled
    assert_same_params(convert_checkpoint(path).params, tuned.params)


def test_missing_upstream_key_fails(model, monkeypatch):
    """upstream loads with strict=False: a key it has and we do not fill must raise."""
    import convert_weights.export as export

    shapes = export.upstream_shapes(model.config)
    monkeypatch.setattr(
        export, "upstream_shapes", lambda config: {**shapes, "graph_conv.0.new.bias": (4,)}
    )
    with pytest.raises(ConversionError, match=r"graph_conv\.0\.new\.bias"):
        params_to_state_dict(model.params, model.config)


def test_incomplete_params_fail(model):
    params = jax.tree_util.tree_map(lambda a: a, model.params)
    del params["params"]["normalizer"]["shift"]
    with pytest.raises(ConversionError, match="normalizer"):
        params_to_state_dict(params, model.config)


def test_model_args_are_upstreams(model):
    from mattersim.forcefield.m3gnet.m3gnet import M3Gnet

    args = upstream_model_args(model.config)
    assert M3Gnet(device="cpu", **args).get_model_args() == args


def test_cli_errors(converted, tmp_path, capsys):
    out = tmp_path / "m.pth"
    assert main(["--to-torch", str(tmp_path / "nothing"), str(out)]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and len(err.strip().splitlines()) == 1

    (tmp_path / "empty").mkdir()
    assert main(["--to-torch", str(tmp_path / "empty"), str(out)]) == 1
    err = capsys.readouterr().err
    assert "not a jmattersim model directory" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()

    out.write_bytes(b"keep me")
    assert main(["--to-torch", str(converted["1M"]), str(out)]) == 1
    err = capsys.readouterr().err
    assert "exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert out.read_bytes() == b"keep me"

    assert main(["--to-torch", str(converted["1M"]), str(out), "--overwrite"]) == 0
    stdout = capsys.readouterr().out.strip().splitlines()
    assert len(stdout) == 1 and "890224 parameters" in stdout[0]
    assert torch.load(out, weights_only=True)["model_args"]["units"] == 128


@pytest.mark.parametrize("existing", [False, True])
def test_failed_write_leaves_no_file(model, tmp_path, monkeypatch, existing):
    """An error half-way through torch.save: no new file, no partial file, and an
    existing file (with overwrite) untouched."""
    out = tmp_path / "m.pth"
    if existing:
        out.write_bytes(b"old")
    save = torch.save

    def interrupted(obj, f, *args, **kwargs):
        save(obj, f, *args, **kwargs)
        f.truncate(1000)  # half written
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_checkpoint(model, out, overwrite=existing)
    assert os.listdir(tmp_path) == (["m.pth"] if existing else [])
    if existing:
        assert out.read_bytes() == b"old"


def test_key_table_without_upstream_is_upstreams(model, monkeypatch):
    """Without mattersim installed (torch only), the keys and shapes come from the
    name table; they are exactly those of upstream's model."""
    import sys

    import convert_weights.export as export

    for config in [model.config, jmattersim.M3GNetConfig(num_blocks=2, units=16, max_l=2)]:
        with_upstream = export.upstream_shapes(config)
        monkeypatch.setitem(sys.modules, "mattersim.forcefield.m3gnet.m3gnet", None)
        assert export.upstream_shapes(config) == with_upstream
        monkeypatch.delitem(sys.modules, "mattersim.forcefield.m3gnet.m3gnet")
