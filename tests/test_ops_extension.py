"""The extension and the op wrappers around it: the backend reported, the kernels on
torch's thread pool and the shared C++ runtime, errors naming the argument (from the
Python wrappers and from the kernels alike), the reference fallback, the backward of
the ops together on CUDA against the CPU."""

import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from contnet import ops

from .helpers import devices


def test_backend_reports_the_extension():
    assert ops.extension_loaded(), ops.backend()
    assert ops.backend().startswith("extension (cpu")
    if os.environ.get("CONTNET_CUDA") == "1":
        # the CUDA kernels were compiled and registered, GPU or not
        assert ops.backend() == "extension (cpu, cuda)"
        for op in ("rk_combine", "rk_combine_learned", "rk_epilogue", "basis_interp"):
            assert ops.extension.has_kernel(op, "cuda")
    with ops.use_reference():
        assert ops.backend() == "reference (forced)"


@pytest.mark.skipif(
    not torch.backends.openmp.is_available() or not sys.platform.startswith("linux"),
    reason="torch without OpenMP: at::parallel_for does not use OpenMP pragmas",
)
def test_extension_kernels_use_torchs_thread_pool():
    # at::parallel_for is inlined into the kernels: built without -fopenmp, they would run
    # on one thread. Built with it, the extension calls the OpenMP runtime torch loaded.
    import contnet._C

    with open(contnet._C.__file__, "rb") as f:
        assert b"GOMP_parallel" in f.read()


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or shutil.which("readelf") is None,
    reason="ELF dependencies are read with readelf on Linux",
)
def test_extension_links_the_shared_cxx_runtime():
    # A static copy of libstdc++ inside the extension keeps locale state apart from the
    # runtime the process has loaded: any stream use (a number read from sysfs, an error
    # message) then calls into the wrong facet and crashes.
    import contnet._C

    out = subprocess.run(
        ["readelf", "-d", contnet._C.__file__], capture_output=True, text=True, check=True
    ).stdout
    needed = [line for line in out.splitlines() if "(NEEDED)" in line]
    assert any("libstdc++.so" in line for line in needed), needed


def test_errors_name_the_argument():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"terms\[1\] must have the shape of x"):
        ops.rk_combine(x, [x, torch.randn(3, 4)], 1.0, [1.0, 1.0])
    with pytest.raises(TypeError, match=r"terms\[0\] must have the dtype of x"):
        ops.rk_combine(x, [x.double()], 1.0, [1.0])
    with pytest.raises(ValueError, match="terms and coeffs must have the same length"):
        ops.rk_combine(x, [x], 1.0, [1.0, 2.0])
    with pytest.raises(TypeError, match="x must be float32, float64"):
        ops.rk_combine(x.int(), [], 1.0, [])
    with pytest.raises(ValueError, match="coeffs must be a 1-d tensor with one value per term"):
        ops.rk_combine(x, [x], 1.0, torch.ones(2))
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        ops.rk_epilogue(torch.randn(2, 3, 4), torch.randn(4), "relu", 1.0, [x], [], 1.0, [1.0])
    with pytest.raises(ValueError, match="act must be one of"):
        ops.rk_epilogue(torch.randn(2, 3), None, "swish", 1.0, [torch.randn(2, 3)], [], 1.0, [1.0])
    with pytest.raises(ValueError, match="coeffs must hold len"):
        ops.rk_epilogue(
            torch.randn(2, 3), None, "relu", 1.0, [torch.randn(2, 3)], [], 1.0, [1.0, 2.0]
        )
    with pytest.raises(ValueError, match="phi must be a float64"):
        ops.basis_interp(torch.rand(2, 3), [torch.randn(3, 2)])
    with pytest.raises(ValueError, match=r"thetas\[0\] must have 3 nodes"):
        ops.basis_interp(torch.rand(2, 3, dtype=torch.float64), [torch.randn(2, 2)])


# Direct callers of torch.ops reach the kernels' own checks (C++ exceptions through the
# dispatcher). Run in a child process: a crash there fails this test with its signal and
# traceback instead of ending the whole session.
_KERNEL_ERRORS = r"""
import sys, torch, contnet
dev = sys.argv[1]
x = torch.randn(4, 3, device=dev)
cases = [
    (r"terms[0] must have the shape of x",
     lambda: torch.ops.contnet.rk_combine(x, [torch.randn(2, device=dev)], 1.0, [1.0])),
    ("coeffs must hold",
     lambda: torch.ops.contnet.rk_epilogue(x, None, 1, 1.0, [x], [], 1.0, [1.0, 2.0], False)),
    ("coeffs must hold",  # the eager entry the integrator calls
     lambda: contnet._C.rk_epilogue(x, None, 1, 1.0, [x], [], 1.0, [1.0, 2.0], False)),
    ("phi must be float64",
     lambda: torch.ops.contnet.basis_interp(torch.rand(2, 3, device=dev),
                                            [torch.randn(3, 2, device=dev)])),
    ("at least one node",
     lambda: torch.ops.contnet.basis_interp(torch.rand(2, 0, dtype=torch.float64, device=dev),
                                            [torch.randn(0, 2, device=dev)])),
    ("at most 8 tensors with learned coefficients",
     lambda: torch.ops.contnet.rk_combine_learned(x, [x] * 9, 1.0, torch.ones(9, device=dev))),
    (r"grads[0] must have the shape of y",
     lambda: torch.ops.contnet.rk_epilogue_backward([x[:2]], None, x, None, 1, 1.0, 0, 1.0,
                                                    [1.0])),
    ("n_terms must be 0 to 8, got 4611686018427387904",  # checked before allocating
     lambda: torch.ops.contnet.rk_epilogue_backward([x], None, x, None, 1, 1.0, 2**62, 1.0,
                                                    [1.0])),
    ("bias must have y's dtype (Float), got Double",
     lambda: torch.ops.contnet.rk_epilogue(x, torch.zeros(3, dtype=torch.float64, device=dev),
                                           1, 1.0, [x], [], 1.0, [1.0], False)),
    ("phi must not require grad",
     lambda: torch.ops.contnet.basis_interp(
         torch.rand(2, 3, dtype=torch.float64, device=dev, requires_grad=True),
         [torch.randn(3, 2, device=dev)])),
]
for expected, call in cases:
    try:
        call()
    except (ValueError, TypeError) as e:  # as the Python wrappers raise them
        assert expected in str(e), (expected, str(e))
    else:
        raise AssertionError(f"no error: {expected}")
print("ok", len(cases))
"""


@pytest.mark.parametrize("device", devices())
def test_kernel_errors_name_the_argument(device):
    r = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", _KERNEL_ERRORS, device],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0 and "ok 10" in r.stdout, (r.returncode, r.stdout, r.stderr[-4000:])


def test_reference_fallback_warns_once(monkeypatch):
    monkeypatch.setattr(ops.extension, "_EXT_ERROR", ImportError("not built"))
    monkeypatch.setattr(ops.extension, "_warned_missing", False)
    x = torch.randn(5)
    with pytest.warns(RuntimeWarning, match="not built"):
        out = ops.rk_combine(x, [x], 1.0, [1.0])
    torch.testing.assert_close(out, 2 * x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.rk_combine(x, [x], 1.0, [1.0])
    assert ops.backend().startswith("reference (contnet._C is not built")


@pytest.mark.cuda
def test_cuda_backward_matches_cpu():
    # the same fresh inputs on both devices (drawn on the CPU: the devices' generators differ)
    inputs = [torch.randn(2, 8, 5, 5, dtype=torch.float64) for _ in range(3)]
    inputs += [torch.randn(8, dtype=torch.float64), torch.randn(2, dtype=torch.float64)]

    def run(device):
        y, x, t, b, c = (v.to(device).requires_grad_() for v in inputs)
        outs = ops.rk_epilogue(y, b, "silu", 1.5, [x, x], [t], 0.5, [0.1, 0.2, 0.3, 0.4], True)
        z = ops.rk_combine(outs[0], [outs[1], outs[2]], 0.3, c)
        return torch.autograd.grad(z.square().sum(), (y, x, t, b, c))

    for a, e in zip(run("cuda"), run("cpu")):
        torch.testing.assert_close(a.cpu(), e)
