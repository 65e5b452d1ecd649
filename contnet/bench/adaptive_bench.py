"""``contnet bench adaptive``: adaptive steps against the ODE libraries a user knows, and
against fixed steps of the same tableau.

- ``peer``: contnet's ``dopri5`` with torchdiffeq's controller settings
  (:meth:`Controller.integral`) against torchdiffeq's ``dopri5`` on a non-autonomous test
  ODE, both landing on ``t1``: solution and rate evaluations. torchdiffeq's ``dopri5``
  estimates its error with Shampine's embedded weights, contnet's with Dormand and
  Prince's; the same pair with torchdiffeq's weights isolates the controller.
- ``jumps``: the first block of a ContinuousNet trained on digits by a short loop here
  (piecewise-constant
  weights in depth), as torchdiffeq's ``dopri5`` integrates it without and with
  ``jump_t`` at the cell edges, and as contnet does: evaluations, accepted and rejected
  steps, wall time.
- ``per_sample``: the same block per input, contnet against torchode (a step size per
  sample; its rate gets a time per sample and groups the batch by cell as contnet's
  does): summed evaluations, rows the rate computed, wall time.
- ``step_cost``: adaptive steps against fixed steps of the same tableau (wall time per
  attempted step), on the same block: the solve as a user runs it, and the steps alone.

Figures are ratios measured side by side in one run; nothing here asserts.
"""

from __future__ import annotations

import argparse
from fractions import Fraction

import torch

from .. import schemes
from ..argtypes import device, positive_int
from ..block import blocks_of
from ..integrate import Controller, odeint
from . import common


def _test_ode(t, x):
    return 2 * torch.cos(3 * torch.as_tensor(t, dtype=x.dtype)) * x - 0.5 * x**3


def peer(rtols=(1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)) -> list[dict]:
    import torchdiffeq

    x0 = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)
    ref = odeint(_test_ode, x0, scheme="dopri5", rtol=1e-13, atol=1e-15)
    shampine = _shampine_dopri5()
    rows = []
    for rtol in rtols:
        atol = rtol / 100
        calls = [0]

        def f(t, x, calls=calls):
            calls[0] += 1
            return _test_ode(t, x)

        ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
        y_tdq = torchdiffeq.odeint(f, x0, ts, method="dopri5", rtol=rtol, atol=atol,
                                   options={"step_t": ts[1:]})[-1]  # fmt: skip
        row = {"rtol": rtol, "atol": atol, "torchdiffeq": {"evaluations": calls[0],
               "error": (y_tdq - ref).abs().max().item()}}  # fmt: skip
        for name, tab in (("contnet", "dopri5"), ("contnet_shampine_weights", shampine)):
            stats = {}
            y = odeint(_test_ode, x0, scheme=tab, rtol=rtol, atol=atol,
                       controller=Controller.integral(), stats=stats)  # fmt: skip
            row[name] = {k: stats[k] for k in ("evaluations", "accepted", "rejected")}
            row[name]["error"] = (y - ref).abs().max().item()
            row[name]["vs_torchdiffeq"] = (y - y_tdq).abs().max().item()
        rows.append(row)
        print(
            f"peer rtol {rtol:.0e}: evaluations torchdiffeq {calls[0]}, contnet "
            f"{row['contnet']['evaluations']}, with Shampine's weights "
            f"{row['contnet_shampine_weights']['evaluations']}; errors "
            f"{row['torchdiffeq']['error']:.1e} / {row['contnet']['error']:.1e}"
        )
    return rows


def _shampine_dopri5() -> schemes.ButcherTableau:
    """Dormand-Prince 5 with the embedded 4th-order weights torchdiffeq uses (Shampine
    1986), checked like every tableau."""
    d = schemes.get("dopri5")
    F = Fraction
    bhat = (F(1951, 21600), F(0), F(22642, 50085), F(451, 720), F(-12231, 42400),
            F(649, 6300), F(1, 60))  # fmt: skip
    return schemes.ButcherTableau("dopri5_shampine", d.exact_a, d.exact_b, d.exact_c, 5,
                                  "Dormand-Prince 5, Shampine's estimate", bhat, 4)  # fmt: skip


def trained_block(seed: int = 0, epochs: int = 6):
    """The first block of a ContinuousNet (widths 8 and 16, K = 4 piecewise-constant cells)
    trained on scikit-learn's digits by a short plain loop (SGD, batch 64, lr 0.05,
    ``epochs`` epochs), and the features entering it for 256 held-out images."""
    from sklearn.datasets import load_digits

    from ..models import ContinuousNet

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - x.mean()) / x.std()
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    train_idx, test_idx = perm[256:], perm[:256]
    torch.manual_seed(seed)
    model = ContinuousNet(1, 10, widths=(8, 16), n_basis=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(epochs):
        order = train_idx[torch.randperm(len(train_idx), generator=g)]
        for i in range(0, len(order), 64):
            b = order[i : i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x[test_idx]).argmax(1) == y[test_idx]).float().mean().item()
        features = model.stem(x[test_idx])
    return blocks_of(model)[0], features, accuracy


def _counting(unit):
    calls = {"n": 0, "rows": 0}

    def f(t, x):
        calls["n"] += 1
        calls["rows"] += x.shape[0]
        return unit(float(t), x)

    return f, calls


def _torchdiffeq_counts(f, x, rtol, atol, jump_t=None):
    """torchdiffeq's dopri5 of ``f`` on [0, 1] (landing on 1), with its accepted and
    rejected steps counted at its step function."""
    import torchdiffeq
    from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver

    counts = {"accepted": 0, "rejected": 0}
    original = RKAdaptiveStepsizeODESolver._adaptive_step

    def counted(self, rk_state):
        new = original(self, rk_state)
        counts["accepted" if new.t1 != rk_state.t1 else "rejected"] += 1
        return new

    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    options = {"step_t": ts[1:]}
    if jump_t is not None:
        options["jump_t"] = torch.tensor(jump_t, dtype=torch.float64)
    RKAdaptiveStepsizeODESolver._adaptive_step = counted
    try:
        y = torchdiffeq.odeint(f, x, ts, method="dopri5", rtol=rtol, atol=atol, options=options)
    finally:
        RKAdaptiveStepsizeODESolver._adaptive_step = original
    return y[-1], counts


def jumps(block, x, rtol=1e-3, atol=1e-5, rounds=3) -> dict:
    unit = block.unit
    edges = unit.basis.jumps_and_kinks()[0]
    row = {"rtol": rtol, "atol": atol, "batch": x.shape[0], "jump_t": edges}
    with torch.no_grad():
        ref = odeint(unit, x, scheme="rk4", n_steps=512)
        runs = {}
        for name, jt in (("torchdiffeq", None), ("torchdiffeq_jump_t", edges)):
            f, calls = _counting(unit)
            y, counts = _torchdiffeq_counts(f, x, rtol, atol, jt)
            row[name] = {"evaluations": calls["n"], **counts, "error": (y - ref).abs().max().item()}
            runs[name] = lambda f=f, jt=jt: _torchdiffeq_counts(f, x, rtol, atol, jt)
        for name, ctrl in (("contnet", Controller.integral()), ("contnet_pi", Controller())):
            stats = {}
            y = odeint(unit, x, scheme="dopri5", rtol=rtol, atol=atol, controller=ctrl,
                       jump_t=edges, stats=stats)  # fmt: skip
            row[name] = {k: stats[k] for k in ("evaluations", "accepted", "rejected")}
            row[name]["error"] = (y - ref).abs().max().item()
            runs[name] = lambda c=ctrl: odeint(unit, x, scheme="dopri5", rtol=rtol, atol=atol,
                                               controller=c, jump_t=edges)  # fmt: skip
        t = common.time_side_by_side(runs, rounds=rounds, min_run_time=0.5)
    for name in runs:
        row[name]["median_ms"] = t[name]["median_s"] * 1e3
    row["timings"] = t
    row["rejected_without_over_with_contnet"] = row["torchdiffeq"]["rejected"] / max(
        row["contnet"]["rejected"], 1
    )
    row["torchdiffeq_jump_t_over_contnet_time"] = common.paired_ratio(
        t, "torchdiffeq_jump_t", "contnet"
    )
    print(
        "jumps: evaluations / rejected -- torchdiffeq "
        f"{row['torchdiffeq']['evaluations']} / {row['torchdiffeq']['rejected']}, with jump_t "
        f"{row['torchdiffeq_jump_t']['evaluations']} / {row['torchdiffeq_jump_t']['rejected']}, "
        f"contnet {row['contnet']['evaluations']} / {row['contnet']['rejected']} "
        f"(PI {row['contnet_pi']['evaluations']} / {row['contnet_pi']['rejected']}); "
        f"time torchdiffeq with jump_t / contnet {row['torchdiffeq_jump_t_over_contnet_time']:.2f}"
    )
    return row


def per_sample(block, x, rtol=1e-3, atol=1e-5, rounds=3) -> dict:
    import torchode as to

    unit = block.unit
    edges = unit.basis.jumps_and_kinks()[0]
    shape = x.shape[1:]
    B = x.shape[0]
    rows_seen = {"rows": 0}

    def grouped(t, y):  # torchode: a time per sample; one call per cell of the batch
        out = torch.empty_like(y)
        cells = torch.bucketize(t.contiguous(), torch.tensor(edges, dtype=t.dtype), right=True)
        for c in cells.unique().tolist():
            m = cells == c
            rows_seen["rows"] += int(m.sum())
            tc = float(t[m][0])
            out[m] = unit(tc, y[m].view(-1, *shape)).flatten(1)
        return out

    term = to.ODETerm(grouped)
    solver = to.AutoDiffAdjoint(to.Dopri5(term=term),
                                to.IntegralController(atol=atol, rtol=rtol, term=term))  # fmt: skip
    t_eval = torch.tensor([[0.0, 1.0]], dtype=x.dtype).repeat(B, 1)

    def run_torchode():
        return solver.solve(to.InitialValueProblem(y0=x.flatten(1), t_eval=t_eval))

    with torch.no_grad():
        ref = odeint(unit, x, scheme="rk4", n_steps=512)
        sol = run_torchode()
        y_to = sol.ys[:, -1].view_as(x)
        to_rows = rows_seen["rows"]
        stats = {}
        kw = dict(scheme="dopri5", rtol=rtol, atol=atol, controller=Controller.integral(),
                  jump_t=edges, per_sample=True, cells=edges)  # fmt: skip
        y = odeint(unit, x, stats=stats, **kw)
        shared = {}
        odeint(unit, x, scheme="dopri5", rtol=rtol, atol=atol, controller=Controller.integral(),
               jump_t=edges, stats=shared)  # fmt: skip
        t = common.time_side_by_side(
            {"torchode": run_torchode, "contnet_per_sample": lambda: odeint(unit, x, **kw)},
            rounds=rounds, min_run_time=0.5,
        )  # fmt: skip
    row = {
        "rtol": rtol, "atol": atol, "batch": B,
        "torchode": {"evaluations_summed": int(sol.stats["n_f_evals"].sum()),
                     "rows_computed": to_rows, "error": (y_to - ref).abs().max().item()},
        "contnet_per_sample": {"evaluations_summed": int(stats["evaluations"].sum()),
                               "error": (y - ref).abs().max().item(),
                               "evaluations_min": int(stats["evaluations"].min()),
                               "evaluations_max": int(stats["evaluations"].max())},
        "contnet_batch_shared": {"evaluations_summed": B * shared["evaluations"]},
        "timings": t,
        "torchode_over_contnet_time": common.paired_ratio(t, "torchode", "contnet_per_sample"),
    }  # fmt: skip
    print(
        f"per sample: summed evaluations contnet {row['contnet_per_sample']['evaluations_summed']}"
        f" (batch-shared {row['contnet_batch_shared']['evaluations_summed']}), torchode "
        f"{row['torchode']['evaluations_summed']} (rows computed {to_rows}); time torchode / "
        f"contnet {row['torchode_over_contnet_time']:.2f}"
    )
    return row


def step_cost(block, x, rtol=1e-3, atol=1e-5, rounds=11) -> dict:
    """An adaptive ``dopri5`` solve against fixed ``dopri5`` steps of as many steps, on the
    block: as a user runs it (jump times at the cell edges, Hairer's first step: a few
    evaluations more than the fixed steps), and the steps alone (the first step given, no
    jump times: the evaluations of fixed steps but one), which isolates what a step's error
    estimate and control cost."""
    unit = block.unit
    edges = unit.basis.jumps_and_kinks()[0]
    alone = Controller(first_step=0.1, jumps=False)
    runs = {"solve": {"jump_t": edges}, "steps": {"controller": alone}}
    fns, out = {}, {}
    with torch.no_grad():
        for name, kw in runs.items():
            stats = {}
            odeint(unit, x, scheme="dopri5", rtol=rtol, atol=atol, stats=stats, **kw)
            tries = stats["accepted"] + stats["rejected"]
            out[name] = {"steps": tries, "evaluations": stats["evaluations"],
                         "evaluations_fixed": tries * 6}  # fmt: skip
            fns[f"adaptive_{name}"] = lambda kw=kw: odeint(
                unit, x, scheme="dopri5", rtol=rtol, atol=atol, **kw
            )
            fns[f"fixed_{name}"] = lambda n=tries: odeint(unit, x, scheme="dopri5", n_steps=n)
        t = common.time_side_by_side(fns, rounds=rounds, min_run_time=0.3)
    for name, row in out.items():
        row["adaptive_over_fixed_per_step"] = common.paired_ratio(
            t, f"adaptive_{name}", f"fixed_{name}"
        )
        print(f"step cost ({name}): an adaptive dopri5 step / a fixed one "
              f"{row['adaptive_over_fixed_per_step']:.2f} ({row['steps']} steps each, "
              f"{row['evaluations']} / {row['evaluations_fixed']} evaluations)")  # fmt: skip
    return {**out, "timings": t, "threads": torch.get_num_threads()}


def adaptive(device_="cpu", rounds=3, epochs=6) -> dict:
    """Adaptive steps against torchdiffeq, torchode and fixed steps (see the module doc)."""
    try:
        import torchdiffeq  # noqa: F401
        import torchode  # noqa: F401
    except ImportError as e:
        print(f"adaptive: {e.name} is not installed (pip install torchdiffeq torchode): skipping")
        return None
    common.setup(device_)
    torch.manual_seed(0)
    payload = {"suite": "adaptive", **common.environment(device_)}
    payload["peer"] = peer()
    block, x, accuracy = trained_block(epochs=epochs)
    block, x = block.to(device_), x.to(device_)
    payload["jumps"] = jumps(block, x, rounds=rounds)
    payload["per_sample"] = per_sample(block, x, rounds=rounds)
    payload["step_cost"] = step_cost(block, x, rounds=max(11, 4 * rounds))
    payload["model"] = {"widths": [8, 16], "n_basis": 4, "basis": "piecewise_constant",
                        "epochs": epochs, "data": "digits", "block": "stages.0",
                        "test_accuracy": accuracy}  # fmt: skip
    print(f"wrote {common.write(f'adaptive-{common.device_tag(device_)}.json', payload)}")
    return payload


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="contnet bench adaptive",
        description="Adaptive steps against torchdiffeq's dopri5 (a test ODE; a trained "
        "block without and with jump_t), per input against torchode, and an adaptive step "
        "against a fixed one; results in adaptive-<device>.json (see bench/README.md).",
    )
    p.add_argument("--device", type=device, default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--rounds", type=positive_int, default=3,
                   help="interleaved timing rounds (default 3)")  # fmt: skip
    p.add_argument("--epochs", type=positive_int, default=6,
                   help="epochs of the block's training on digits (default 6)")  # fmt: skip
    a = p.parse_args(argv)
    adaptive(a.device, a.rounds, a.epochs)
