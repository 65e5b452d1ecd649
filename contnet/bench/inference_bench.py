"""``contnet bench inference``: small-batch inference (no grad) of a block, eager and
replayed from a CUDA graph, against the eager hand loop (GPU only)."""

from __future__ import annotations

import argparse

import torch

from ..argtypes import device, positive_int
from ..models import cuda_graph
from . import common
from .block_problem import SHAPES, Problem


def inference(
    device="cuda", shapes=("stage1", "stage2", "stage3"), batch=8, scheme="rk4", K=16, rounds=5
):
    """Small-batch inference (no grad): contnet eager, contnet replayed from a CUDA graph
    (:func:`cuda_graph`), the hand loop eager. Launches and Python dominate here."""
    if device != "cuda":
        print("inference: CUDA graphs need a GPU; nothing to measure on the CPU")
        return None
    common.setup(device)
    results = []
    for shape_name in shapes:
        _, c, p = SHAPES[shape_name]
        prob = Problem(batch, c, p, "piecewise_constant", K, scheme, K, device, True)
        prob.block.eval()
        x = prob.x.detach()
        graphed = cuda_graph(prob.block, x)
        th1, th2 = prob.theta1.detach(), prob.theta2.detach()

        def eager(f, x=x, th1=th1, th2=th2):
            def run():
                with torch.no_grad():
                    return f(x, th1, th2)

            return run

        t = common.time_side_by_side(
            {
                "contnet": eager(prob.contnet),
                "contnet_graph": lambda g=graphed, x=x: g(x),
                "hand": eager(prob.hand),
            },
            rounds=rounds,
            min_run_time=0.3,
            device=device,
        )
        ms = {k: v["median_s"] * 1e3 for k, v in t.items()}
        row = {
            "shape": shape_name,
            "batch": batch,
            "channels": c,
            "pixels": p,
            "scheme": scheme,
            "n_steps": K,
            "median_ms": ms,
            "timings": t,
        }
        row["hand_over_graph"] = ms["hand"] / ms["contnet_graph"]
        results.append(row)
        print(
            f"{shape_name} batch {batch}: contnet {ms['contnet']:.3f} ms, graph {ms['contnet_graph']:.3f} ms, "
            f"hand {ms['hand']:.3f} ms; hand/graph {row['hand_over_graph']:.2f}"
        )
    payload = {"suite": "inference", **common.environment(device), "results": results}
    print(f"wrote {common.write(f'inference-{common.device_tag(device)}.json', payload)}")
    return payload


def inference_main(argv=None):
    p = argparse.ArgumentParser(prog="contnet bench inference", description=inference.__doc__)
    p.add_argument("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=positive_int, default=8)
    p.add_argument("--rounds", type=positive_int, default=5)
    a = p.parse_args(argv)
    inference(a.device, batch=a.batch, rounds=a.rounds)
