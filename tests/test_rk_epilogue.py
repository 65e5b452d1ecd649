"""rk_epilogue against its reference: every activation, dtype, layout and size; relu's
mask; what its backward keeps; opcheck and float64 gradcheck; the eager entry the
integrator calls; forward-mode AD refused clearly; CPU/CUDA parity."""

import pytest
import torch

import contnet
from contnet import ops

from .helpers import devices
from .op_cases import DTYPES, EPS, LAYOUTS, SHAPES, check_error, rand

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
    y = rand(shape, dtype, device, layout)
    b = torch.randn(shape[1], device=device).to(dtype) if bias else None
    bases = [rand(shape, dtype, device, layout) for _ in range(n_bases)]
    terms = [rand(shape, dtype, device, layout) for _ in range(n_terms)]
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
        check_error(out, ex, ea, dtype, n_terms + 2)


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
def test_forward_mode_ad_runs_the_references(name):
    """The extension's kernels have no forward-mode derivative: under forward-mode AD
    (``torch.autograd.forward_ad``) and inside a torch.func transform the public ops run
    the references, whose tangents they return, with and without grad mode; the
    extension's own entry refuses a tangent rather than dropping it."""
    import torch.autograd.forward_ad as fwAD

    x, call = _forward_ad_call(name)
    tangent = torch.randn_like(x)
    for grad_mode in (True, False):
        with torch.set_grad_enabled(grad_mode), fwAD.dual_level():
            if name == "eager entry":
                with pytest.raises(RuntimeError, match="jvp is not implemented"):
                    call(fwAD.make_dual(x, tangent))
                continue
            dual = fwAD.unpack_dual(call(fwAD.make_dual(x, tangent)))
            with ops.use_reference():
                ref = fwAD.unpack_dual(call(fwAD.make_dual(x, tangent)))
        if name != "eager entry":
            torch.testing.assert_close(dual.primal, ref.primal, rtol=0, atol=0)
            torch.testing.assert_close(dual.tangent, ref.tangent, rtol=0, atol=0)
            assert dual.tangent.abs().max() > 0
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


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_rk_epilogue_cuda_matches_cpu(dtype, layout):
    shape = (3, 17, 9, 33)
    tol = {"rtol": 4 * EPS[dtype], "atol": 8 * EPS[dtype]}
    x, *ks = [rand(shape, dtype, "cpu", layout) for _ in range(4)]
    g = lambda t: t.cuda()  # noqa: E731
    b = torch.randn(17).to(dtype)
    coeffs = torch.randn(2 * 3).tolist()
    cpu = ops.rk_epilogue(x, b, "gelu", 0.7, [ks[0], ks[1]], [ks[2], x], 0.2, coeffs, True)
    gpu = ops.rk_epilogue(
        g(x), g(b), "gelu", 0.7, [g(ks[0]), g(ks[1])], [g(ks[2]), g(x)], 0.2, coeffs, True
    )
    for a, e in zip(gpu, cpu):
        torch.testing.assert_close(a.cpu(), e, **tol)
