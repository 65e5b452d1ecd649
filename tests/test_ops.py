"""The fused ops against their references: parity over dtypes x layouts x sizes, opcheck,
float64 gradcheck (gradgradcheck for the linear ops), errors, CPU/CUDA parity."""

import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

import contnet
from contnet import ops

from .helpers import devices

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LAYOUTS = ["contiguous", "channels_last", "sliced"]
# shapes (4-d, so channels_last applies) of 0, 1, 3, 1023 and 2^20 + 1 elements
SHAPES = [(0, 3, 4, 4), (1, 1, 1, 1), (1, 3, 1, 1), (1, 3, 11, 31), (1, 17, 1, 61681)]
# unit roundoff per dtype
EPS = {torch.float32: 6e-8, torch.float64: 1.1e-16, torch.float16: 4.9e-4, torch.bfloat16: 3.9e-3}


def _layout(x, layout):
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":
        big = torch.empty(x.shape[:-1] + (2 * x.shape[-1] + 1,), dtype=x.dtype, device=x.device)
        big[..., 1::2] = x
        return big[..., 1::2]
    return x


def _rand(shape, dtype, device, layout):
    return _layout(torch.randn(shape, device=device).to(dtype), layout)


def _check_error(out, exact, eager, dtype, terms=1):
    """The kernel's error against an upcast reference is within twice eager PyTorch's
    error in the same dtype, or a few roundoffs of the result's magnitude."""
    assert out.dtype == dtype
    if out.numel() == 0:
        return
    err = (out.double() - exact).abs().max().item()
    eager_err = (eager.double() - exact).abs().max().item()
    floor = (terms + 2) * EPS[dtype] * (exact.abs().max().item() + 1.0)
    assert err <= max(2 * eager_err, floor), (err, eager_err, floor)


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


# ---------------------------------------------------------------------------- rk_combine
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: str(torch.Size(s).numel()))
def test_rk_combine_matches_reference(device, dtype, layout, shape):
    n_terms = 5
    x = _rand(shape, dtype, device, layout)
    ks = [_rand(shape, dtype, device, layout) for _ in range(n_terms)]
    cs = torch.randn(n_terms).tolist()
    out = ops.rk_combine(x, ks, 0.3, cs)
    assert out.shape == shape
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    exact = ops.rk_combine_reference(x.double(), [k.double() for k in ks], 0.3, cs)
    eager = x
    for k, c in zip(ks, cs):
        eager = eager + (0.3 * c) * k
    _check_error(out, exact, eager, dtype, n_terms)


@pytest.mark.parametrize("n_terms", [0, 1, 8, 11])
def test_rk_combine_any_number_of_terms(n_terms):
    x = torch.randn(7, 5, dtype=torch.float64)
    ks = [torch.randn(7, 5, dtype=torch.float64) for _ in range(n_terms)]
    cs = torch.randn(n_terms).tolist()
    torch.testing.assert_close(
        ops.rk_combine(x, ks, 0.5, cs), ops.rk_combine_reference(x, ks, 0.5, cs)
    )


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_rk_combine_half_sums_longer_than_one_pass_stay_in_float(device, dtype, layout):
    # 12 terms take two passes of the kernel; the running sum must stay in float between
    # them. x in [1, 2) (one ulp u there); the first 8 terms add u / 2, the last 4 another
    # u / 2: x + u exactly, where a sum rounded to the storage type after the first pass
    # loses both halves for every x with an even last bit
    u = torch.finfo(dtype).eps
    x = _layout((1 + torch.rand(2, 3, 8, 9, device=device)).to(dtype), layout)
    ks = [torch.full_like(x, u / 16)] * 8 + [torch.full_like(x, u / 8)] * 4
    out = torch.ops.contnet.rk_combine(x, ks, 1.0, [1.0] * 12)
    assert out.dtype == dtype and out.stride() == x.stride()
    torch.testing.assert_close(out, x + u, rtol=0, atol=0)
    torch.testing.assert_close(
        out, ops.rk_combine_reference(x, ks, 1.0, [1.0] * 12), rtol=0, atol=0
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_terms", [6, 11])
def test_rk_combine_larger_than_cache(dtype, n_terms):
    # Over 64 MiB of operands: where that exceeds the last-level cache, the CPU kernel
    # streams its output past it (aligned blocks, unaligned heads where the threads' ranges
    # begin, odd tails; 11 terms take a second pass that reads the output back).
    numel = (1 << 22) + 3
    x = torch.randn(numel).to(dtype)
    ks = [torch.randn(numel).to(dtype) for _ in range(n_terms)]
    cs = torch.randn(n_terms).tolist()
    out = ops.rk_combine(x, ks, 0.3, cs)
    exact = ops.rk_combine_reference(x.double(), [k.double() for k in ks], 0.3, cs)
    eager = x
    for k, c in zip(ks, cs):
        eager = eager + (0.3 * c) * k
    _check_error(out, exact, eager, dtype, n_terms)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: str(torch.Size(s).numel()))
def test_rk_combine_learned_matches_reference(device, dtype, layout, shape):
    x = _rand(shape, dtype, device, layout)
    ks = [_rand(shape, dtype, device, layout) for _ in range(3)]
    c = torch.randn(3, device=device, dtype=dtype, requires_grad=True)
    out = ops.rk_combine(x, ks, 0.7, c)
    exact = ops.rk_combine_reference(x.double(), [k.double() for k in ks], 0.7, c.detach().double())
    eager = x + sum((0.7 * c[j].detach()) * ks[j] for j in range(3))
    _check_error(out, exact, eager, dtype, 3)
    g = _rand(shape, dtype, device, layout)
    (gc,) = torch.autograd.grad(out, c, g)
    exact_gc = torch.stack([0.7 * (k.double() * g.double()).sum() for k in ks])
    tol = 8 * EPS[dtype] * (1 + sum((k.double().abs() * g.double().abs()).sum() for k in ks).item())
    assert (gc.double() - exact_gc).abs().max().item() <= tol


# ---------------------------------------------------------------------------- rk_epilogue
EPILOGUE_CASES = [
    # (act, n_bases, n_terms, bias, return_k)
    ("relu", 2, 0, True, False),
    ("identity", 1, 0, False, False),
    ("tanh", 2, 2, True, True),
    ("gelu", 3, 1, True, False),
    ("silu", 1, 3, False, True),
    ("softplus", 2, 1, True, False),
]


def _epilogue_inputs(shape, dtype, device, layout, n_bases, n_terms, bias):
    y = _rand(shape, dtype, device, layout)
    b = torch.randn(shape[1], device=device).to(dtype) if bias else None
    bases = [_rand(shape, dtype, device, layout) for _ in range(n_bases)]
    terms = [_rand(shape, dtype, device, layout) for _ in range(n_terms)]
    coeffs = torch.randn(n_bases * (n_terms + 1)).tolist()
    return y, b, bases, terms, coeffs


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: str(torch.Size(s).numel()))
@pytest.mark.parametrize("case", EPILOGUE_CASES[:3], ids=lambda c: c[0])
def test_rk_epilogue_matches_reference(device, dtype, layout, shape, case):
    act, n_bases, n_terms, bias, return_k = case
    y, b, bases, terms, coeffs = _epilogue_inputs(
        shape, dtype, device, layout, n_bases, n_terms, bias
    )
    outs = ops.rk_epilogue(y, b, act, 0.8, bases, terms, 0.25, coeffs, return_k)
    code = ops.ACT_CODES[act]
    d = lambda t: None if t is None else t.double()  # noqa: E731
    exact = ops.rk_epilogue_reference(
        d(y), d(b), code, 0.8, [d(t) for t in bases], [d(t) for t in terms], 0.25, coeffs, return_k
    )
    # eager PyTorch in the same dtype, without upcasting
    z = y if b is None else y + b.view(1, -1, 1, 1)
    k = 0.8 * ops.activations.ACT_FUNCS[code](z)
    eager = []
    for o, base in enumerate(bases):
        row = coeffs[o * (n_terms + 1) : (o + 1) * (n_terms + 1)]
        eager.append(
            base + sum((0.25 * row[j]) * t for j, t in enumerate(terms)) + (0.25 * row[-1]) * k
        )
    eager += [k] if return_k else []
    assert len(outs) == n_bases + int(return_k)
    for out, ex, ea in zip(outs, exact, eager):
        assert out.shape == shape
        _check_error(out, ex, ea, dtype, n_terms + 2)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("case", EPILOGUE_CASES, ids=lambda c: c[0])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_rk_epilogue_gradcheck_and_opcheck(case, layout, device):
    act, n_bases, n_terms, bias, return_k = case
    y, b, bases, terms, coeffs = _epilogue_inputs(
        (2, 3, 4, 5), torch.float64, device, layout, n_bases, n_terms, bias
    )
    y = y + 0.05 * torch.sign(y)  # keep relu's kink away from finite-difference probes
    leaves = [t.requires_grad_() for t in [y, *bases, *terms] + ([b] if bias else [])]

    def f(y, *rest):
        bs, ts = list(rest[:n_bases]), list(rest[n_bases : n_bases + n_terms])
        bb = rest[-1] if bias else None
        return tuple(ops.rk_epilogue(y, bb, act, 0.8, bs, ts, 0.25, coeffs, return_k))

    assert torch.autograd.gradcheck(f, tuple(leaves))
    torch.library.opcheck(
        torch.ops.contnet.rk_epilogue.default,
        (y, b, ops.ACT_CODES[act], 0.8, bases, terms, 0.25, coeffs, return_k),
    )


def test_rk_epilogue_backward_of_unused_outputs():
    y, b, bases, terms, coeffs = _epilogue_inputs(
        (2, 3, 4, 4), torch.float64, "cpu", "contiguous", 2, 1, True
    )
    y.requires_grad_()
    out = ops.rk_epilogue(y, b, "tanh", 1.0, bases, terms, 0.5, coeffs, return_k=True)
    (g,) = torch.autograd.grad(out[2].sum(), y)  # only k is used
    torch.testing.assert_close(g, 1 - torch.tanh(y + b.view(1, -1, 1, 1)) ** 2)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_rk_epilogue_relu_mask(device, layout):
    """``return_mask`` adds relu's bool mask ``y + bias > 0`` (NaN: true), which the
    backward takes in place of y with the same gradients; both pass opcheck, and other
    activations refuse it by name."""
    y, b, bases, terms, coeffs = _epilogue_inputs(
        (2, 3, 4, 5), torch.float64, device, layout, 2, 1, True
    )
    relu = ops.ACT_CODES["relu"]
    # opcheck compares outputs without equal_nan: it runs on finite values
    torch.library.opcheck(
        torch.ops.contnet.rk_epilogue.default,
        (y, b, relu, -0.8, bases, terms, 0.25, coeffs, True),
        {"return_mask": True},
    )
    y[0, 0, 0, :2] = torch.tensor([float("nan"), -float(b[0])])  # NaN, and z exactly 0
    args = (y, b, relu, -0.8, bases, terms, 0.25, coeffs, True)
    outs = torch.ops.contnet.rk_epilogue.default(*args, return_mask=True)
    ref = ops.rk_epilogue_reference(*args, return_mask=True)
    assert outs[-1].dtype == torch.bool and len(outs) == len(bases) + 2
    assert torch.equal(outs[-1], ref[-1]) and torch.equal(outs[-1], ~(y + b.view(1, -1, 1, 1) <= 0))
    for o, r in zip(outs[:-1], ref[:-1]):
        torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12, equal_nan=True)
    grads = [torch.randn_like(t) for t in bases]
    grad_k = torch.randn_like(y)
    back = (grads, grad_k, y, b, relu, -0.8, len(terms), 0.25, coeffs)
    with_y = torch.ops.contnet.rk_epilogue_backward.default(*back)
    with_mask = torch.ops.contnet.rk_epilogue_backward.default(grads, grad_k, outs[-1], *back[3:])
    for a, m in zip(with_y, with_mask):
        for ta, tm in zip(*((a, m) if isinstance(a, list) else ([a], [m]))):
            assert tm.dtype == torch.float64
            torch.testing.assert_close(tm, ta, rtol=0, atol=0, equal_nan=True)
    torch.library.opcheck(
        torch.ops.contnet.rk_epilogue_backward.default, (grads, grad_k, outs[-1], *back[3:])
    )
    tanh = ops.ACT_CODES["tanh"]
    with pytest.raises(ValueError, match="return_mask needs act relu"):
        torch.ops.contnet.rk_epilogue.default(
            y, b, tanh, 0.8, bases, terms, 0.25, coeffs, False, True
        )
    with pytest.raises(ValueError, match="y may be a bool mask only for act relu"):
        torch.ops.contnet.rk_epilogue_backward.default(
            grads, None, outs[-1], b, tanh, 0.8, 1, 0.25, coeffs
        )
    with pytest.raises(TypeError, match=r"grads\[1\] must have the dtype of grads\[0\]"):
        torch.ops.contnet.rk_epilogue_backward.default(
            [grads[0], grads[1].float()], None, outs[-1], b, relu, 0.8, 1, 0.25, coeffs
        )
    with pytest.raises(TypeError, match="or for act relu a bool mask"):
        torch.ops.contnet.rk_epilogue_backward.default(
            grads, None, outs[-1].to(torch.uint8), b, relu, 0.8, 1, 0.25, coeffs
        )
    with pytest.raises(ValueError, match="y .a mask. must have the shape of grads.0."):
        torch.ops.contnet.rk_epilogue_backward.default(
            grads, None, outs[-1][:1], b, relu, 0.8, 1, 0.25, coeffs
        )


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_rk_epilogue_keeps_for_backward_only_what_it_reads(device, dtype, bias):
    """Through autograd, relu keeps its bool mask instead of y (y itself can be freed),
    identity keeps nothing of y, other activations keep y; the gradients are the
    reference's, for the outputs and k alone, and y's gradient keeps y's layout
    (channels_last here) when the outputs' gradients come contiguous."""
    kinds = {"relu": torch.bool, "identity": None, "tanh": dtype}
    for act, kept_dtype in kinds.items():
        y, b, bases, terms, coeffs = _epilogue_inputs(
            (2, 3, 4, 4), dtype, device, "channels_last", 2, 1, bias
        )
        leaves = [t.requires_grad_() for t in [y, *bases, *terms] + ([b] if bias else [])]
        kept = []

        def pack(t, kept=kept):
            kept.append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            outs = ops.rk_epilogue(y, b, act, 0.7, bases, terms, 0.5, coeffs, return_k=True)
        big = [t.dtype for t in kept if t.shape == y.shape]
        assert big == ([kept_dtype] if kept_dtype else []), act
        ref = ops.rk_epilogue_reference(
            y, b, ops.ACT_CODES[act], 0.7, bases, terms, 0.5, coeffs, return_k=True
        )
        for used in ([0, 1, 2], [2], [1]):
            w = [torch.randn(outs[i].shape, device=device).to(dtype) for i in used]
            got, want = (
                torch.autograd.grad(
                    sum((o[i] * wi).sum() for i, wi in zip(used, w)),
                    leaves,
                    retain_graph=True,
                    allow_unused=True,
                )
                for o in (outs, ref)
            )
            assert got[0].is_contiguous(memory_format=torch.channels_last), act
            tol = {"rtol": 2e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {}  # ulps
            for leaf, g, r in zip(leaves, got, want):
                zero = torch.zeros_like(leaf)
                g, r = (zero if g is None else g), (zero if r is None else r)
                if leaf is b and dtype == torch.bfloat16:
                    # a sum over 32 elements rounded to bfloat16 one by one (the kernel's
                    # gradient of y) or not (the reference's): a few roundoffs of the
                    # summed magnitudes apart, which cancellation can make large relatively
                    bound = 4 * EPS[dtype] * want[0].float().abs().sum((0, 2, 3)) + 1e-3
                    assert ((g.float() - r.float()).abs() <= bound).all(), act
                else:
                    torch.testing.assert_close(g, r, **tol)


@pytest.mark.parametrize("device", devices())
def test_rk_epilogue_backward_with_and_without_a_graph(device):
    """The backward calls its kernel below autograd when it builds no graph and through
    autograd with ``create_graph``: the same gradients, and a second derivative is a clear
    error that says what to do, not a wrong answer."""
    for bias in (True, False):
        y, b, bases, terms, coeffs = _epilogue_inputs(
            (2, 3, 4, 4), torch.float64, device, "contiguous", 2, 1, bias
        )
        leaves = [t.requires_grad_() for t in [y, *bases, *terms] + ([b] if bias else [])]
        out = ops.rk_epilogue(y, b, "tanh", 0.7, bases, terms, 0.5, coeffs, return_k=True)
        w = [torch.randn_like(o) for o in out]
        loss = sum((o * wo).sum() for o, wo in zip(out, w))
        plain = torch.autograd.grad(loss, leaves, retain_graph=True)
        graphed = torch.autograd.grad(loss, leaves, create_graph=True)
        for p, g in zip(plain, graphed):
            assert not p.requires_grad
            torch.testing.assert_close(g, p, rtol=0, atol=0)
        assert graphed[0].requires_grad
        with pytest.raises(RuntimeError, match=r"has no derivative: .* contnet.ops.use_reference"):
            torch.autograd.grad(graphed[0].sum(), y)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("case", EPILOGUE_CASES, ids=lambda c: c[0])
def test_rk_epilogue_eager_entry_is_the_op(case, device):
    """``contnet._C.rk_epilogue`` (what the integrator calls in eager mode) gives what
    ``torch.ops.contnet.rk_epilogue`` gives, values and gradients, for lists or tuples,
    int or float numbers, with and without grad."""
    act, n_bases, n_terms, bias, return_k = case
    y, b, bases, terms, coeffs = _epilogue_inputs(
        (2, 3, 5, 4), torch.float32, device, "channels_last", n_bases, n_terms, bias
    )
    code = ops.ACT_CODES[act]
    args = (y, b, code, 2, bases, terms, 0.25, coeffs, return_k)
    with torch.no_grad():
        for out, ref in zip(
            contnet._C.rk_epilogue(
                *args[:4], tuple(bases), tuple(terms), 0.25, tuple(coeffs), return_k
            ),
            torch.ops.contnet.rk_epilogue.default(*args),
        ):
            torch.testing.assert_close(out, ref, rtol=0, atol=0)
            assert out.stride() == ref.stride() and not out.requires_grad
    leaves = [t.requires_grad_() for t in [y, *bases, *terms] + ([b] if bias else [])]
    grads = []
    for entry in (contnet._C.rk_epilogue, torch.ops.contnet.rk_epilogue.default):
        outs = entry(*args)
        assert isinstance(outs, list) and len(outs) == n_bases + int(return_k)
        torch.manual_seed(1)
        loss = sum((o * torch.randn_like(o)).sum() for o in outs)
        grads.append(torch.autograd.grad(loss, leaves))
    for g, ref in zip(*grads):
        torch.testing.assert_close(g, ref, rtol=0, atol=0)


def _forward_ad_call(name):
    x, k = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    c = torch.randn(2)
    phi = contnet.basis.get("fem_linear", 3)(torch.rand(2).tolist())
    return x, {
        "rk_combine": lambda a: ops.rk_combine(a, [k], 0.1, [1.0]),
        "rk_combine_learned": lambda a: ops.rk_combine(a, [k, a], 0.1, c),
        "rk_epilogue": lambda a: ops.rk_epilogue(a, None, "relu", 0.5, [x], [], 0.1, [0.5])[0],
        "eager entry": lambda a: contnet._C.rk_epilogue(
            a, None, 1, 0.5, [x], [], 0.1, [0.5], False
        )[0],
        "basis_interp": lambda a: ops.basis_interp(phi, [a.flatten()[:12].view(3, 4)])[0],
    }[name]


@pytest.mark.parametrize(
    "name", ["rk_combine", "rk_combine_learned", "rk_epilogue", "eager entry", "basis_interp"]
)
def test_forward_mode_ad_is_a_clear_error(name):
    """The extension's kernels have no forward-mode derivative: a tangent on an input
    raises instead of being dropped (the kernels alone would return no tangent or a zero
    one), with and without grad mode. Inside a torch.func transform the public ops run the
    references, whose tangent is the reference's; the extension's own entry refuses."""
    import torch.autograd.forward_ad as fwAD

    x, call = _forward_ad_call(name)
    for grad_mode in (True, False):
        with torch.set_grad_enabled(grad_mode), fwAD.dual_level():
            with pytest.raises(RuntimeError, match="jvp is not implemented"):
                call(fwAD.make_dual(x, torch.randn_like(x)))
    tangent = torch.randn_like(x)
    if name == "eager entry":
        with pytest.raises(RuntimeError, match="functorch transforms"):
            torch.func.jvp(call, (x,), (tangent,))
        return
    out, jvp = torch.func.jvp(call, (x,), (tangent,))
    with ops.use_reference():
        ref_out, ref_jvp = torch.func.jvp(call, (x,), (tangent,))
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    torch.testing.assert_close(jvp, ref_jvp, rtol=0, atol=0)
    assert jvp.abs().max() > 0


class _LoggedTensor(torch.Tensor):
    seen: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(func)
        return super().__torch_function__(func, types, args, kwargs or {})


def test_rk_epilogue_eager_entry_leaves_the_rest_to_torch_ops():
    """What the eager entry does not read itself (a tensor subclass, a torch function mode,
    keywords, another type) goes to torch.ops, with its behaviour and its errors."""
    op = torch.ops.contnet.rk_epilogue.default
    y, x = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    ref = op(y, None, 1, 0.5, [x], [], 0.1, [0.5], False)
    _LoggedTensor.seen = []
    out = contnet._C.rk_epilogue(
        y.as_subclass(_LoggedTensor), None, 1, 0.5, [x], [], 0.1, [0.5], False
    )
    assert op in _LoggedTensor.seen and type(out[0]) is _LoggedTensor
    torch.testing.assert_close(out[0].as_subclass(torch.Tensor), ref[0])

    class Mode(torch.overrides.TorchFunctionMode):
        seen = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.seen.append(func)
            return func(*args, **(kwargs or {}))

    with Mode():
        out = contnet._C.rk_epilogue(y, None, 1, 0.5, [x], [], 0.1, [0.5], False)
    assert op in Mode.seen
    torch.testing.assert_close(out[0], ref[0])

    class Dispatch(torch.utils._python_dispatch.TorchDispatchMode):
        seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(func)
            return func(*args, **(kwargs or {}))

    with Dispatch():  # dispatch modes are the dispatcher's: seen on the entry's own path
        contnet._C.rk_epilogue(y, None, 1, 0.5, [x], [], 0.1, [0.5], False)
    assert op in Dispatch.seen

    out = contnet._C.rk_epilogue(y, None, 1, 0.5, [x], [], 0.1, coeffs=[0.5], return_k=False)
    torch.testing.assert_close(out[0], ref[0])
    for bad in (
        (y, None, 1, 0.5, [x], [], 0.1, ["a"], False),  # a string coefficient
        (y, None, 2**70, 0.5, [x], [], 0.1, [0.5], False),  # act out of int64
        (y, None, 1, 0.5, x, [], 0.1, [0.5], False),  # bases not a list
        (y, None, 1, 0.5, [x], [], 0.1, [0.5]),  # an argument missing
    ):
        with pytest.raises(Exception) as want:
            op(*bad)
        with pytest.raises(want.type) as got:
            contnet._C.rk_epilogue(*bad)
        assert str(got.value) == str(want.value)


# ---------------------------------------------------------------------------- basis_interp
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: str(torch.Size(s).numel()))
def test_basis_interp_matches_reference(device, dtype, layout, shape):
    K = 3
    b = contnet.basis.get("fem_linear", K)
    phi = b(torch.rand(6).tolist()).to(device)
    thetas = [
        _rand((K,) + shape[1:], dtype, device, layout),
        torch.randn(K, 5, device=device).to(dtype),
    ]
    outs = ops.basis_interp(phi, thetas)
    exact = ops.basis_interp_reference(phi, [t.double() for t in thetas])
    for out, ex, t in zip(outs, exact, thetas):
        # the nodes' layout where each node is one dense block (channels_last here), else
        # contiguous (sliced)
        assert out.shape == (6,) + t.shape[1:]
        if layout == "sliced" and t.dim() == 4 and t.numel() > 1:
            assert out.is_contiguous()
        elif t.numel() > 0:
            assert out.stride()[1:] == t.stride()[1:] and out.stride(0) == t[0].numel()
        eager = torch.einsum("sk,k...->s...", phi.to(dtype), t)
        _check_error(out, ex, eager, dtype, K)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("family,K", [("fem_linear", 4), ("legendre", 3), ("piecewise_linear", 4)])
def test_basis_interp_gradcheck_and_opcheck(family, K, device):
    phi = contnet.basis.get(family, K)(torch.rand(5).tolist()).to(device)
    thetas = [
        torch.randn(K, 3, 2, dtype=torch.float64, device=device, requires_grad=True),
        torch.randn(K, 4, dtype=torch.float64, device=device, requires_grad=True),
    ]
    f = lambda *ts: tuple(ops.basis_interp(phi, list(ts)))  # noqa: E731
    assert torch.autograd.gradcheck(f, tuple(thetas))
    assert torch.autograd.gradgradcheck(f, tuple(thetas))
    torch.library.opcheck(torch.ops.contnet.basis_interp.default, (phi, thetas))


@pytest.mark.parametrize("device", devices())
def test_basis_interp_keeps_channels_last_filter_banks(device):
    """Nodes stacked as channels_last filter banks (as a channels_last ContinuousBlock keeps
    them) give weights in that layout, with no copy of the nodes, and the nodes' gradient
    comes back in it; values, gradients and opcheck (the fake kernel's strides) agree."""
    K, S = 3, 5
    phi = contnet.basis.get("fem_linear", K)(torch.rand(S).tolist()).to(device)
    bank = torch.randn(K * 6, 4, 3, 3, dtype=torch.float64, device=device)
    theta = bank.contiguous(memory_format=torch.channels_last).unflatten(0, (K, 6))
    theta.requires_grad_()
    assert not theta.is_contiguous()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        (out,) = ops.basis_interp(phi, [theta])
    copies = [e.name for e in prof.events() if e.name in ("aten::contiguous", "aten::clone")]
    assert copies == []
    assert out.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    (ref,) = ops.basis_interp_reference(phi, [theta.detach()])
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, theta, g)
    assert grad.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(grad, torch.einsum("sk,s...->k...", phi, g), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: ops.basis_interp(phi, [t])[0], (theta,))
    torch.library.opcheck(torch.ops.contnet.basis_interp.default, (phi, [theta]))
    # a node stack whose nodes are not dense blocks is read through a contiguous copy
    sliced = torch.randn(K, 6, 8, device=device, dtype=torch.float64)[:, :, ::2]
    (out,) = ops.basis_interp(phi, [sliced])
    assert out.is_contiguous()
    # the layouts where the kernels' rule and the fake kernel's could part: one node with
    # any stride along dim 0, size-1 dims with odd strides, transposed and expanded nodes
    one = contnet.basis.get("fem_linear", 2)(torch.rand(S).tolist()).to(device)[:, :1]
    odd = [
        torch.randn(6, 1, 5, device=device, dtype=torch.float64).transpose(0, 1),
        torch.randn(K, 1, 4, device=device, dtype=torch.float64).as_strided(
            (K, 1, 4), (4, 1000, 1)
        ),
        torch.randn(K, 5, 4, device=device, dtype=torch.float64).transpose(1, 2),
        torch.randn(1, 4, device=device, dtype=torch.float64).expand(K, 4),
    ]
    for theta_ in [sliced, *odd]:
        p = one if theta_.shape[0] == 1 else phi
        (out,) = ops.basis_interp(p, [theta_])
        torch.testing.assert_close(out, ops.basis_interp_reference(p, [theta_])[0])
        torch.library.opcheck(torch.ops.contnet.basis_interp.default, (p, [theta_]))


def test_basis_interp_of_no_stage_times():
    theta = torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=True)
    (w,) = ops.basis_interp(torch.zeros(0, 3, dtype=torch.float64), [theta])
    assert w.shape == (0, 2, 5)
    (g,) = torch.autograd.grad(w.sum(), theta)
    torch.testing.assert_close(g, torch.zeros_like(theta), rtol=0, atol=0)


def test_basis_interp_backward_scatters_into_nodes():
    phi = contnet.basis.get("fem_linear", 3)([0.25, 0.5, 0.75])
    theta = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    (w,) = ops.basis_interp(phi, [theta])
    g = torch.randn(3, 2, dtype=torch.float64)
    (gt,) = torch.autograd.grad(w, theta, g)
    torch.testing.assert_close(gt, phi.T @ g)


# ---------------------------------------------------------------------------- autograd, opcheck
@pytest.mark.parametrize("device", devices())
def test_rk_combine_gradcheck_and_opcheck(device):
    f64 = {"dtype": torch.float64, "device": device}
    x = torch.randn(3, 4, **f64, requires_grad=True)
    ks = [torch.randn(3, 4, **f64, requires_grad=True) for _ in range(3)]
    cs = [0.5, -1.25, 2.0]
    f = lambda x, *ks: ops.rk_combine(x, ks, 0.7, cs)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, *ks))
    assert torch.autograd.gradgradcheck(f, (x, *ks))
    torch.library.opcheck(torch.ops.contnet.rk_combine.default, (x, ks, 0.7, cs))
    g = torch.randn(3, 4, **f64, requires_grad=True)
    torch.library.opcheck(torch.ops.contnet.rk_combine_backward.default, (g, 0.7, cs))


@pytest.mark.parametrize("device", devices())
def test_rk_combine_learned_gradcheck_and_opcheck(device):
    f64 = {"dtype": torch.float64, "device": device}
    x = torch.randn(3, 4, **f64, requires_grad=True)
    ks = [torch.randn(3, 4, **f64, requires_grad=True) for _ in range(3)]
    c = torch.randn(3, **f64, requires_grad=True)
    f = lambda x, c, *ks: ops.rk_combine(x, ks, 0.7, c)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, c, *ks))
    assert torch.autograd.gradgradcheck(f, (x, c, *ks))
    torch.library.opcheck(torch.ops.contnet.rk_combine_learned.default, (x, ks, 0.7, c))
    g = torch.randn(3, 4, **f64, requires_grad=True)
    torch.library.opcheck(torch.ops.contnet.rk_combine_learned_backward.default, (g, ks, 0.7, c))


def test_rk_combine_learned_double_backward_without_terms():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(0, dtype=torch.float64, requires_grad=True)
    out = ops.rk_combine(x, [], 0.7, c)
    gx, gc = torch.autograd.grad((out**2).sum(), [x, c], create_graph=True)
    assert gc.shape == (0,)
    (ggx,) = torch.autograd.grad(gx.sum() + gc.sum(), x)  # through the backward's backward
    torch.testing.assert_close(ggx, torch.full_like(x, 2.0))


def test_rk_combine_skips_zero_coefficients_and_empty():
    x, k = torch.randn(4), torch.randn(4)
    inf = torch.full((4,), float("inf"))
    torch.testing.assert_close(ops.rk_combine(x, [inf, k], 0.5, [0.0, 2.0]), x + k)
    e = torch.empty(0, 3)
    assert ops.rk_combine(e, [e], 0.1, [1.0]).shape == (0, 3)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
def test_rk_combine_kernels_skip_vanishing_coefficients(device, dtype):
    # called through torch.ops (as a compiled graph calls it), not only through the wrapper:
    # a coefficient whose h * c rounds to zero in the accumulation type drops its term, as
    # in the reference and the epilogue
    x, k = torch.randn(4, 5, device=device).to(dtype), torch.randn(4, 5, device=device).to(dtype)
    inf = torch.full_like(x, float("inf"))
    tiny = 2.0**-151 if dtype != torch.float64 else 0.0  # rounds to 0 in float
    for op in (torch.ops.contnet.rk_combine, ops.rk_combine, ops.rk_combine_reference):
        out = op(x, [inf, k, -inf], 0.5, [0.0, 2.0, tiny])
        torch.testing.assert_close(
            out, ops.rk_combine_reference(x, [k], 0.5, [2.0]), rtol=0, atol=0
        )


@pytest.mark.parametrize("device", devices())
def test_rk_combine_deep_permuted_tensors_keep_their_layout(device):
    # 7 dims, dense but permuted: more dims than the CUDA strided index holds
    x = torch.randn(2, 3, 2, 2, 3, 2, 2, device=device).permute(6, 0, 5, 1, 4, 2, 3)
    ks = [torch.randn_like(x) for _ in range(2)]
    out = ops.rk_combine(x, ks, 0.5, [1.0, -2.0])
    assert out.stride() == torch.empty_like(x).stride()
    torch.testing.assert_close(out, ops.rk_combine_reference(x, ks, 0.5, [1.0, -2.0]))
    (g,) = torch.autograd.grad(ops.rk_combine(x.requires_grad_(), ks, 0.5, [1.0, -2.0]).sum(), x)
    torch.testing.assert_close(g, torch.ones_like(x))


# ---------------------------------------------------------------------------- errors, fallback
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


# ---------------------------------------------------------------------------- CUDA parity
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_matches_cpu(dtype, layout):
    shape = (3, 17, 9, 33)
    tol = {"rtol": 4 * EPS[dtype], "atol": 8 * EPS[dtype]}
    x, *ks = [_rand(shape, dtype, "cpu", layout) for _ in range(4)]
    g = lambda t: t.cuda()  # noqa: E731
    cs = torch.randn(3).tolist()
    torch.testing.assert_close(
        ops.rk_combine(g(x), [g(k) for k in ks], 0.3, cs).cpu(),
        ops.rk_combine(x, ks, 0.3, cs),
        **tol,
    )
    c = torch.randn(3, dtype=dtype)
    torch.testing.assert_close(
        ops.rk_combine(g(x), [g(k) for k in ks], 0.3, g(c)).cpu(),
        ops.rk_combine(x, ks, 0.3, c),
        **tol,
    )
    b = torch.randn(17).to(dtype)
    coeffs = torch.randn(2 * 3).tolist()
    cpu = ops.rk_epilogue(x, b, "gelu", 0.7, [ks[0], ks[1]], [ks[2], x], 0.2, coeffs, True)
    gpu = ops.rk_epilogue(
        g(x), g(b), "gelu", 0.7, [g(ks[0]), g(ks[1])], [g(ks[2]), g(x)], 0.2, coeffs, True
    )
    for a, e in zip(gpu, cpu):
        torch.testing.assert_close(a.cpu(), e, **tol)
    phi = contnet.basis.get("legendre", 3)(torch.rand(7).tolist())
    th = [torch.randn(3, 5, 4).to(dtype), _rand((3,) + shape[1:], dtype, "cpu", layout)]
    for a, e in zip(ops.basis_interp(g(phi), [g(t) for t in th]), ops.basis_interp(phi, th)):
        torch.testing.assert_close(a.cpu(), e, **tol)


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
