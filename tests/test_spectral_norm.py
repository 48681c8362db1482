"""Parity of every spectral_norm_step backend with the plain-torch reference."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastgen
from fastgen.ops.spectral_norm import SPECTRAL_NORM_STEP
from fastgen.ops.spectral_norm.reference import power_iteration_ref, spectral_norm_step_ref
from fastgen.testing import assert_close, backends_for

EPS = 1e-12
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
SHAPES = ((1, 1), (3, 5), (37, 53), (64, 130), (130, 64), (257, 33))
FAST_BACKENDS = [b for b in backends_for(SPECTRAL_NORM_STEP) if b != "ref"]
BACKEND_PARAMS = [pytest.param(b, marks=[pytest.mark.triton] if b == "triton" else [], id=b)
                  for b in FAST_BACKENDS]


def make_inputs(shape, dtype=torch.float32, *, seed=0, transposed=False):
    gen = torch.Generator().manual_seed(seed)
    m, n = shape
    weight = torch.randn(n, m, generator=gen, dtype=torch.float64).t() if transposed \
        else torch.randn(m, n, generator=gen, dtype=torch.float64)
    u = F.normalize(torch.randn(m, generator=gen, dtype=torch.float64), dim=0)
    v = F.normalize(torch.randn(n, generator=gen, dtype=torch.float64), dim=0)
    return weight.to(dtype), u.to(dtype), v.to(dtype)


def skip_if_rejected(backend, args):
    if reasons := SPECTRAL_NORM_STEP.backend(backend).reasons(args[0].device.type, args):
        pytest.skip(f"{backend} rejects this input: {'; '.join(reasons)}")


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("iterations", [1, 3])
@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "transposed"])
def test_step_matches_reference(backend, dtype, shape, iterations, transposed):
    weight, u, v = make_inputs(shape, dtype, transposed=transposed)
    skip_if_rejected(backend, (weight, u, v))
    leaf = weight.detach().clone().requires_grad_(True)
    sigma, u_new, v_new = fastgen.ops.spectral_norm_step(leaf, u, v, iterations, EPS, impl=backend)
    ref = spectral_norm_step_ref(weight, u, v, iterations, EPS)
    assert sigma.shape == () and sigma.dtype == dtype and u_new.dtype == dtype and v_new.dtype == dtype
    assert not u_new.requires_grad and not v_new.requires_grad
    # sigma ~ the largest singular value: compare relative to it; u, v are unit vectors.
    assert_close(sigma / ref[0], torch.ones((), dtype=dtype), scale=4)
    assert_close(u_new, ref[1], scale=4)
    assert_close(v_new, ref[2], scale=4)
    sigma.backward()
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert_close(leaf.grad, torch.outer(u_new.to(acc), v_new.to(acc)).to(dtype), scale=4)


@pytest.mark.parametrize("backend", ["ref", *BACKEND_PARAMS])
def test_zero_weight_gives_zero_sigma_without_nan(backend):
    weight, u, v = make_inputs((6, 9))
    sigma, u_new, v_new = fastgen.ops.spectral_norm_step(torch.zeros_like(weight), u, v, impl=backend)
    assert sigma.item() == 0.0
    assert torch.equal(u_new, torch.zeros_like(u)) and torch.equal(v_new, torch.zeros_like(v))


@pytest.mark.parametrize("backend", ["ref", *BACKEND_PARAMS])
def test_opcheck(backend):
    weight, u, v = make_inputs((7, 11))
    torch.library.opcheck(SPECTRAL_NORM_STEP.op, (weight.requires_grad_(True), u, v, 2, EPS, backend))
    _, u_new, v_new = spectral_norm_step_ref(weight, u, v, 2, EPS)
    torch.library.opcheck(torch.ops.fastgen.spectral_norm_step_backward.default,
                          (torch.tensor(1.5), u_new, v_new, backend))


@pytest.mark.parametrize("backend", ["ref", *BACKEND_PARAMS])
def test_gradchecks_at_converged_vectors(backend):
    """With u, v at the top singular pair, sigma(W) after one more step is the top singular value
    to first order, and its derivative is the u v^T the op's backward returns (like torch's,
    the op holds u and v fixed, so second derivatives with respect to W alone are not checked).
    Mixed second derivatives, as in WGAN-GP's gradient penalty, are."""
    weight, u, v = make_inputs((6, 8), torch.float64)
    u, v = power_iteration_ref(weight, u, v, 500, EPS)
    x = torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def sigma_of(w):
        return fastgen.ops.spectral_norm_step(w, u, v, 1, EPS, impl=backend)[0]

    def layer_loss(w, inputs):  # a spectrally normalized linear layer and a non-linear loss
        return (torch.mv(w, inputs) / sigma_of(w)).square().sum()

    def grad_wrt_input(w):
        inputs = x.clone().requires_grad_(True)
        return torch.autograd.grad(layer_loss(w, inputs), inputs, create_graph=True)[0]

    def grad_wrt_weight(inputs):
        w = weight.clone().requires_grad_(True)
        return torch.autograd.grad(layer_loss(w, inputs), w, create_graph=True)[0]

    assert torch.autograd.gradcheck(sigma_of, (weight.clone().requires_grad_(True),))
    assert torch.autograd.gradcheck(grad_wrt_input, (weight.clone().requires_grad_(True),))
    assert torch.autograd.gradcheck(grad_wrt_weight, (x.clone().requires_grad_(True),))


def test_torch_compile_fullgraph_matches_eager():
    backend = "cpu" if "cpu" in FAST_BACKENDS else "ref"
    weight, u, v = make_inputs((16, 24))

    def sigma_scaled(w):
        sigma, u_new, v_new = fastgen.ops.spectral_norm_step(w, u, v, 2, EPS, impl=backend)
        return w / sigma, u_new, v_new

    leaf = weight.clone().requires_grad_(True)
    compiled = torch.compile(sigma_scaled, fullgraph=True)(leaf)
    eager = sigma_scaled(weight)
    for got, want in zip(compiled, eager):
        assert_close(got, want)
    compiled[0].sum().backward()
    leaf_eager = weight.clone().requires_grad_(True)
    sigma_scaled(leaf_eager)[0].sum().backward()
    assert_close(leaf.grad, leaf_eager.grad)


def _bad_calls():
    weight, u, v = make_inputs((4, 5))
    return [
        ("1-D weight", lambda: fastgen.ops.spectral_norm_step(weight[0], u, v), ValueError, "weight_mat"),
        ("empty weight", lambda: fastgen.ops.spectral_norm_step(weight[:0], u[:0], v), ValueError, "weight_mat"),
        ("integer weight", lambda: fastgen.ops.spectral_norm_step(weight.long(), u.long(), v.long()), TypeError,
         "weight_mat"),
        ("u length", lambda: fastgen.ops.spectral_norm_step(weight, u[:3], v), ValueError, "u"),
        ("v dtype", lambda: fastgen.ops.spectral_norm_step(weight, u, v.double()), TypeError, "v"),
        ("zero iterations", lambda: fastgen.ops.spectral_norm_step(weight, u, v, 0), ValueError, "n_power_iterations"),
        ("negative eps", lambda: fastgen.ops.spectral_norm_step(weight, u, v, 1, -1.0), ValueError, "eps"),
        ("NaN weight", lambda: fastgen.ops.spectral_norm_step(weight.clone().fill_(float("nan")), u, v), ValueError,
         "NaN"),
        ("Inf weight", lambda: fastgen.ops.spectral_norm_step(torch.full_like(weight, float("inf")), u, v),
         ValueError, "NaN or Inf"),
    ]


@pytest.mark.parametrize("case", _bad_calls(), ids=lambda c: c[0])
def test_bad_input_raises_naming_the_argument(case):
    _, call, error, argument = case
    with pytest.raises(error, match=argument):
        call()


def test_matches_torch_parametrization_power_iteration():
    """The op's u, v and sigma equal those of torch's own spectral_norm on a Linear layer."""
    torch.manual_seed(3)
    layer = torch.nn.utils.parametrizations.spectral_norm(torch.nn.Linear(13, 9))
    sn = layer.parametrizations.weight[0]
    weight = layer.parametrizations.weight.original.detach()
    u, v = sn._u.clone(), sn._v.clone()
    normalized = layer.weight  # train mode: one power iteration, then W / sigma
    sigma, u_new, v_new = fastgen.ops.spectral_norm_step(weight, u, v, 1, sn.eps)
    assert_close(u_new, sn._u)
    assert_close(v_new, sn._v)
    assert_close(weight / sigma, normalized.detach())
