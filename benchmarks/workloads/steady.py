"""steady: energy, forces and stress of the same frames, steady state (second
pass): ``evaluate``, ``forward_batch`` (batches of 16) and the ASE calculator
against upstream's ``predict_properties`` (its best batch size) and upstream's
ASE calculator. XLA's FLOP count gives the rate of the model work."""

from __future__ import annotations

import numpy as np

from harness import BATCH, draw, interleaved, jm_model, up_potential
from report import Bench


def measure(bench: Bench, name: str) -> None:
    """200 frames, best of 2 (96 frames, 1 with ``--quick``)."""
    n, reps = (96, 1) if bench.quick else (200, 2)
    steady_rows(name, n, bench.seed, reps, bench.add, bench.info)


def steady_rows(name: str, n: int, seed: int, reps: int, add, info: dict) -> None:
    import jax

    import jmattersim

    frames = draw(n, seed + 1)
    model = jm_model(name)
    pot = up_potential(name)
    from mattersim.datasets.utils.build import build_dataloader
    from mattersim.forcefield.potential import MatterSimCalculator

    def up_batched(batch_size):
        def run():
            loader = build_dataloader(
                frames, model_type="m3gnet", batch_size=batch_size, only_inference=True
            )
            return pot.predict_properties(loader, include_forces=True, include_stresses=True)

        return run

    up_calc = MatterSimCalculator(pot, device="cpu")
    jm_calc = jmattersim.MatterSimCalculator(model)

    def through(calc):
        def run():
            for a in frames:
                a = a.copy()
                a.calc = calc
                a.get_potential_energy(), a.get_forces(), a.get_stress()

        return run

    def jm_forward_batch():
        for k in range(0, n, BATCH):
            out = jmattersim.forward_batch(
                model, frames[k : k + BATCH], include_forces=True, include_stresses=True
            )
        return jax.block_until_ready(out)

    fns = {
        "evaluate": lambda: jmattersim.evaluate(model, frames),
        "forward_batch": jm_forward_batch,
        "calculator": through(jm_calc),
        "up16": up_batched(16),
        "up32": up_batched(32),
        "up64": up_batched(64),
        "up_calc": through(up_calc),
    }
    for fn in fns.values():  # first pass: compilation, upstream's lazy set-up
        fn()
    t = interleaved(fns, reps)
    best_up = min(("up16", "up32", "up64"), key=t.get)
    for impl in ("evaluate", "forward_batch", "calculator"):
        add(
            "E+F+S steady state",
            name,
            "frames/s",
            n / t[impl],
            n / t[best_up],
            f"{n} frames; upstream predict_properties, batch {best_up[2:]} (its best of 16/32/64)",
            jm_impl=impl,
        )
    add(
        "E+F+S steady state",
        name,
        "frames/s",
        n / t["calculator"],
        n / t["up_calc"],
        f"{n} frames; both ASE calculators, one structure at a time",
        jm_impl="calculator vs upstream calculator",
    )
    info[f"flops_{name}"] = {
        **model_flop_rate(model, frames, reps),
        "run": len(info["runs"]),
        "matmul_gflops": info["matmul_gflops"],
    }


def model_flop_rate(model, frames: list, reps: int) -> dict:
    """The FLOP rate of the model work of ``evaluate`` on ``frames``: its batches,
    padded and on the device, run through the compiled function; XLA's FLOP count
    of each (padding included: the work the machine does) over their time."""
    import jax

    from jmattersim._src import engine
    from jmattersim._src.graph import structure_graph

    graphs = [structure_graph(a, model.config) for a in frames]
    params = model.astype(np.float32).params
    flops = padded = real = 0.0
    batches = []
    for group, budget in engine.plan([engine.counts_of(g) for g in graphs]):
        batch = jax.device_put(
            engine.pad([graphs[k] for k in group], budget, model.config, np.float32)
        )
        cost = engine.predict_batch.lower(model.config, params, batch).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        flops += float(cost["flops"])
        padded += budget.edges
        real += sum(graphs[k].n_edge for k in group)
        batches.append(batch)

    def model_work():
        for batch in batches:
            out = engine.predict_batch(model.config, params, batch)
        jax.block_until_ready(out)

    model_work()
    seconds = interleaved({"work": model_work}, max(reps, 3))["work"]
    return {
        "xla_flops": flops,
        "seconds": seconds,
        "edge_fill": real / padded,
        "gflops": flops / seconds / 1e9,
    }
