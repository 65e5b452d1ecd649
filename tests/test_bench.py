"""The microbenchmarks' machinery (no timing asserted): the command reaches every suite,
the profiler counts a pass, the floor's weights and values, peak memory, the ratios in
the targets' terms, the defaults."""

import pytest
import torch

from contnet import cli


def test_bench_command_reaches_the_suites(capsys):
    for suite in ("ops", "block", "inference"):
        with pytest.raises(SystemExit) as e:
            cli.main(["bench", suite, "--help"])
        assert e.value.code == 0
    assert "--device" in capsys.readouterr().out


def test_block_profile_counts_a_pass():
    """``python -m bench block --profile``: the operators of one pass, called from the
    top level (a convolution's inner ops not counted again), and the device's busy time
    as the union of its kernels' intervals."""
    from contnet.bench import block_problem, profiling

    prob = block_problem.Problem(2, 3, 4, "piecewise_constant", 2, "midpoint", 3, "cpu", False)
    x, th1, th2 = prob.inputs("hand")
    with torch.no_grad():
        floor = profiling.profile_pass(lambda: prob.floor(x, th1, th2), "cpu")
    # conv, relu, conv, relu, scale: 5 operators for each of 2 * 3 stages
    assert floor["operators"] == 5 * 2 * 3
    assert floor["device_kernels"] == 0 and floor["device_busy_ms"] == 0
    top = floor["top_self_host_ms"]
    assert any(name.startswith("aten::") for name in top) and all(v >= 0 for v in top.values())
    assert profiling.busy_us([(0, 4), (2, 5), (7, 8), (7.5, 7.75)]) == 6


@pytest.mark.parametrize("channels_last", [False, True])
def test_block_bench_floor_weights_take_the_convolutions_layout(channels_last):
    """The floor's per-stage weights are in the layout its convolutions read (channels_last
    filters with a channels_last input, as contnet's unit has them), so no convolution of
    the limit converts its weight; the input and contnet's unit have that layout too."""
    from contnet.bench import block_problem

    prob = block_problem.Problem(2, 3, 4, "piecewise_constant", 2, "rk4", 2, "cpu", channels_last)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert prob.x.is_contiguous(memory_format=layout)
    weights = [w for pair in prob.floor_w for w in pair]
    assert len(weights) == 2 * 4 * 2
    assert all(w.is_contiguous(memory_format=layout) and w.is_leaf for w in weights)
    unit_weight = prob.block.unit.conv1.weight
    assert unit_weight[0].is_contiguous(memory_format=layout)


@pytest.mark.parametrize("basis", ["piecewise_constant", "fem_linear"])
def test_block_bench_floor_values_stay_normal(basis):
    """The floor chains 64 rates without the residual: with the rate's own weights its state
    shrinks to denormals and zeros (slow on some CPUs, which would flatter the others'
    ratios to it); its scaled weights keep every stage's values normal floats."""
    from contnet.bench import block_problem

    prob = block_problem.Problem(4, 8, 6, basis, 16, "rk4", 16, "cpu", True)
    x = prob.x.detach()
    tiny = torch.finfo(torch.float32).tiny
    with torch.no_grad():
        for w1, w2 in prob.floor_w:
            x = prob._rate_w(x, w1, w2)
            assert x.abs().max() > 1e3 * tiny


def test_bench_peak_bytes_on_the_cpu():
    """The CPU memory figure of the benches: the peak of what is allocated while a function
    runs (here 1 + 2 MiB live at once, after a 1 MiB tensor freed), its result included."""
    from contnet.bench import common

    def fn():
        a = torch.empty(2**18)
        b = torch.empty(2**18)
        del a
        c = torch.empty(2**19)
        return b, c

    assert common.peak_bytes(fn, "cpu") == 3 * 2**20
    # a freed temporary counts; the sum's scalar adds a few bytes
    assert 2**20 < common.peak_bytes(lambda: torch.empty(2**18).sum(), "cpu") <= 2**20 + 64


def test_bench_peak_bytes_prints_nothing():
    """Measuring memory on the CPU profiles every pass; the profiler's own start and stop
    lines stay out of the bench's output."""
    import os
    import pathlib
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    code = (
        "import torch\nfrom contnet.bench import common\n"
        "for _ in range(3):\n    print(common.peak_bytes(lambda: torch.empty(256), 'cpu'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=pathlib.Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1024"] * 3
    assert "profiler_start" not in done.stderr and "profiler_stop" not in done.stderr


def test_block_bench_ratios_in_the_targets_terms():
    """The JSON rows' ratios of medians: over_floor is impl / floor, faster_than_hand is
    hand / impl, for each pass."""
    from contnet.bench import block_bench, common

    def timings(ms):
        return {k: common.summary([v / 1e3, 2 * v / 1e3, v / 1e3]) for k, v in ms.items()}

    fwd = timings({"floor": 2.0, "contnet": 2.2, "hand": 4.4})
    fb = timings({"floor": 5.0, "contnet": 5.5, "hand": 8.25})
    over = block_bench.over_floor(fwd, fb)
    faster = block_bench.faster_than_hand(fwd, fb)
    assert over["forward"] == pytest.approx({"floor": 1.0, "contnet": 1.1, "hand": 2.2})
    assert over["forward_backward"] == pytest.approx({"floor": 1.0, "contnet": 1.1, "hand": 1.65})
    assert faster["forward_backward"] == pytest.approx({"floor": 1.65, "contnet": 1.5, "hand": 1.0})


def test_block_bench_defaults():
    """``python -m bench block`` without options: ``host`` (batch 1, a measure of host time)
    only when asked for; on a GPU, whose eager passes wait on the host, more rounds than 3."""
    from contnet.bench import block_bench

    gpu, cpu = block_bench.defaults("cuda"), block_bench.defaults("cpu")
    assert gpu["shapes"] == ["stage1", "stage2", "stage3", "wide"]
    assert cpu["shapes"] == ["stage1", "stage2", "stage3"]
    assert block_bench.defaults("cuda:0") == gpu
    assert gpu["rounds"] == 5 and cpu["rounds"] == 9
    assert gpu["default_batch"] is None and cpu["default_batch"] == 16


@pytest.mark.parametrize("kind", ["mlp", "transformer"])
@pytest.mark.parametrize("basis", ["piecewise_constant", "fem_linear"])
def test_feature_unit_problems_agree_in_every_implementation(kind, basis):
    # every implementation the block benchmark times computes the same block (the floor
    # chains the stages' rates without the residual: its own function)
    from contnet.bench.feature_problem import FeatureProblem

    prob = FeatureProblem(kind, 2, 5, 16, basis, 3 if basis == "fem_linear" else 2, "rk4", 2, "cpu")
    ins = prob.inputs("hand")
    with torch.no_grad():
        ref = prob.hand(*ins)
        for impl in ("contnet", "compile"):
            out = getattr(prob, impl)(*ins)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        assert prob.floor(*ins).shape == ref.shape
    grads = torch.autograd.grad(prob.contnet(*ins).sum(), prob.inputs("contnet"))
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_block_bench_runs_nchw_and_feature_rows(tmp_path, monkeypatch):
    from contnet.bench import block_bench

    monkeypatch.setenv("CONTNET_BENCH_RESULTS", str(tmp_path))
    payload = block_bench.run(
        shapes=("host",),
        bases=("piecewise_constant",),
        ks=(2,),
        impls=("floor", "contnet", "hand"),
        rounds=1,
        min_run_time=0.0,
        units=("conv", "mlp"),
        batch=2,
        tag="test",
    )
    rows = [(r["unit"], r["channels_last"]) for r in payload["results"]]
    assert rows == [("conv", True), ("conv", False), ("mlp", None)]
    assert all(r["contnet_vs_hand_rel_diff"] < 1e-5 for r in payload["results"])
