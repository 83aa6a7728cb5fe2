"""Run with 2 host devices (XLA_FLAGS=--xla_force_host_platform_device_count=2):
a committee's evaluate split over the devices against one device. Prints OK."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from small_reference import MODEL  # noqa: E402
from test_committee import perturbed  # noqa: E402

import jmattersim  # noqa: E402

from conftest import special_structures  # noqa: E402

model = jmattersim.load_model(MODEL)
committee = jmattersim.train.stack_models([perturbed(model, seed) for seed in range(3)])
structures = list(special_structures().values())[:4]
mesh = jmattersim.batch.graph_mesh()
assert mesh.size == 2, mesh
ladder = jmattersim.batch.LADDER[:1]  # several groups: both devices hold structures
split = jmattersim.evaluate(committee, structures, mesh=mesh, ladder=ladder)
one = jmattersim.evaluate(committee, structures, ladder=ladder)
for a, b in zip(split, one, strict=True):
    np.testing.assert_allclose(a.energy, b.energy, rtol=1e-5)
    np.testing.assert_allclose(a.energy_std, b.energy_std, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a.forces_std, b.forces_std, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(a.stress_std_gpa, b.stress_std_gpa, rtol=1e-4, atol=1e-4)
print("OK")
