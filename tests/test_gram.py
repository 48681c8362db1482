"""Parity of every Gram-matrix backend with the plain-torch reference, plus op-library behaviour.

Tolerances (one table per dtype, below): G and dF entries sum N (or C) products of unit normals. The
largest deviation from the reference measured on these shapes and layouts, any backend, was
2.1e-4 float32 and 1.7e-13 float64, on gradient entries of magnitude ~330 (shape 1x33x270):
a third of the float32 allowance atol + rtol * |expected| and 1/200 of the float64 one.
"""
from __future__ import annotations

import pytest
import torch

import fastgen
from fastgen.ops.gram import GRAM_MATRIX
from fastgen.ops.gram.reference import gram_matrix_backward_ref, gram_matrix_ref
from fastgen.testing import backends_for

TOLERANCES = {
    torch.float32: {"rtol": 3e-6, "atol": 3e-5},
    torch.float64: {"rtol": 1e-12, "atol": 1e-12},
}
# [B, C, N]: single element, primes, C across one and several SIMD panels (16 floats, 8 doubles),
# N across two of the C++ kernel's 256-column chunks.
SHAPES = ((1, 1, 1), (2, 3, 5), (3, 17, 33), (1, 33, 270), (1, 40, 7))
LAYOUTS = ("contiguous", "transposed", "strided")
FAST_BACKENDS = [b for b in backends_for(GRAM_MATRIX) if b != "ref"]


def backend_param(name: str):
    return pytest.param(name, marks=[pytest.mark.triton] if name == "triton" else [], id=name)


BACKEND_PARAMS = [backend_param(b) for b in FAST_BACKENDS]


def make_features(shape, dtype=torch.float32, layout="contiguous", seed=0) -> torch.Tensor:
    """Normal values in a contiguous layout, stored N-major (transposed), or every other column of a wider buffer."""
    b, c, n = shape
    gen = torch.Generator().manual_seed(seed)
    if layout == "transposed":
        return torch.randn(b, n, c, generator=gen, dtype=torch.float64).to(dtype).transpose(1, 2)
    if layout == "strided":
        return torch.randn(b, c, 2 * n, generator=gen, dtype=torch.float64).to(dtype)[..., ::2]
    return torch.randn(b, c, n, generator=gen, dtype=torch.float64).to(dtype)


def assert_close(actual, expected, msg=""):
    torch.testing.assert_close(actual, expected, **TOLERANCES[expected.dtype], msg=msg or None)


def value_and_grad(fn, features, grad_out):
    leaf = features.detach().clone().requires_grad_(True)
    out = fn(leaf)
    return out, torch.autograd.grad(out, leaf, grad_out)[0]


# ---------------------------------------------------------------- parity per backend

@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", TOLERANCES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_forward_and_gradient_match_reference(backend, dtype, shape, layout):
    features = make_features(shape, dtype, layout)
    assert layout == "contiguous" or min(shape[1:]) == 1 or not features.is_contiguous()
    grad_out = make_features((shape[0], shape[1], shape[1]), dtype, seed=5)  # not symmetric
    out, grad = value_and_grad(lambda f: fastgen.ops.gram_matrix(f, impl=backend), features, grad_out)
    ref_out, ref_grad = value_and_grad(gram_matrix_ref, features, grad_out)
    assert out.shape == (shape[0], shape[1], shape[1]) and out.dtype == dtype
    assert_close(out, ref_out, f"{backend} forward")
    assert_close(grad, ref_grad, f"{backend} gradient")
    if backend == "cpu":  # mirrored tiles, and diagonal tiles summing the same products in the same order
        assert torch.equal(out, out.mT)


@pytest.mark.parametrize("backend", ["ref", *BACKEND_PARAMS])
def test_four_d_features_are_flattened(backend):
    maps = make_features((2, 5, 21))[..., None].reshape(2, 5, 7, 3)
    assert_close(fastgen.ops.gram_matrix(maps, impl=backend), gram_matrix_ref(maps.flatten(2)))


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_backward_op_matches_reference_formula(backend):
    features = make_features((2, 19, 23), torch.float64)
    grad_out = make_features((2, 19, 19), torch.float64, seed=5)
    got = torch.ops.fastgen.gram_matrix_backward(grad_out, features, backend)
    assert_close(got, gram_matrix_backward_ref(grad_out, features))


def test_reference_backward_formula_matches_autograd():
    features = make_features((2, 6, 9), torch.float64)
    grad_out = make_features((2, 6, 6), torch.float64, seed=5)
    _, expected = value_and_grad(lambda f: torch.bmm(f, f.mT), features, grad_out)
    assert_close(gram_matrix_backward_ref(grad_out, features), expected)


# ---------------------------------------------------------------- torch.library and autograd checks

@pytest.mark.parametrize("backend", ["ref", *BACKEND_PARAMS])
def test_opcheck(backend):
    features = make_features((2, 5, 7), layout="transposed")
    grad_out = make_features((2, 5, 5), seed=5)
    torch.library.opcheck(torch.ops.fastgen.gram_matrix.default,
                          (features.detach().requires_grad_(True), backend))
    torch.library.opcheck(torch.ops.fastgen.gram_matrix_backward.default, (grad_out, features, backend))


@pytest.mark.parametrize("backend", ["ref", *BACKEND_PARAMS])
def test_gradcheck_and_gradgradcheck_float64(backend):
    features = make_features((2, 3, 4), torch.float64).requires_grad_(True)
    fn = lambda f: fastgen.ops.gram_matrix(f, impl=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (features,))
    assert torch.autograd.gradgradcheck(fn, (features,))


def test_torch_compile_fullgraph_matches_eager():
    backend = "cpu" if "cpu" in FAST_BACKENDS else "ref"
    features = make_features((2, 6, 10))
    grad_out = make_features((2, 6, 6), seed=5)
    eager = lambda f: fastgen.ops.gram_matrix(f, impl=backend).square().sum(dim=(1, 2))  # noqa: E731
    compiled = torch.compile(eager, fullgraph=True)
    out, grad = value_and_grad(compiled, features, grad_out[:, 0, 0])
    ref_out, ref_grad = value_and_grad(eager, features, grad_out[:, 0, 0])
    assert_close(out, ref_out)
    assert_close(grad, ref_grad)


# ---------------------------------------------------------------- backend choice and errors

def test_fastgen_backend_env_forces_reference(monkeypatch):
    args = (make_features((1, 3, 4)),)
    monkeypatch.setenv("FASTGEN_BACKEND", "ref")
    assert GRAM_MATRIX.select("auto", args)[0] == "ref"
    for backend in FAST_BACKENDS:  # an explicit impl= wins over the environment
        assert GRAM_MATRIX.select(backend, args)[0] == backend


@pytest.mark.skipif("cpu" not in FAST_BACKENDS, reason="the C++ extension is not built")
def test_auto_picks_cpu_for_float_and_reference_for_half():
    assert GRAM_MATRIX.select("auto", (make_features((1, 3, 4)),))[0] == "cpu"
    half = make_features((1, 3, 4), torch.bfloat16)
    assert GRAM_MATRIX.select("auto", (half,))[0] == "ref"
    torch.testing.assert_close(fastgen.ops.gram_matrix(half), gram_matrix_ref(half))


@pytest.mark.parametrize("case", [
    ("2-D features", lambda x: x[0], ValueError, "features must be a 3-D"),
    ("5-D features", lambda x: x[..., None, None], ValueError, "features must be a 3-D"),
    ("integer features", lambda x: x.long(), TypeError, "features must be float"),
    ("empty features", lambda x: x[:, :0], ValueError, "features must have every dimension"),
    ("features not a tensor", lambda x: x.tolist(), TypeError, "features must be a torch.Tensor"),
], ids=lambda c: c[0])
def test_bad_input_raises_naming_the_argument(case):
    _, make, error, message = case
    with pytest.raises(error, match=message):
        fastgen.ops.gram_matrix(make(make_features((2, 3, 4))))


def test_unknown_impl_is_rejected():
    with pytest.raises(ValueError, match="impl"):
        fastgen.ops.gram_matrix(make_features((1, 2, 3)), impl="fast")
