"""Parity of every AdaIN backend with the plain-torch reference, plus op-library behaviour."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastgen
from fastgen import _backends
from fastgen.ops import BackendUnavailableError
from fastgen.ops.adain import ADAIN, ADAIN_FROM_STYLE
from fastgen.ops.adain.reference import (
    adain_backward_ref,
    adain_from_style_backward_ref,
    adain_from_style_ref,
    adain_ref,
    style_stats_ref,
)
from fastgen.testing import (
    LAYOUTS,
    ODD_SHAPES,
    assert_close,
    backends_for,
    make_feature_map,
    make_style_vectors,
)

EPS = 1e-5
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
FAST_BACKENDS = [b for b in backends_for(ADAIN) if b != "ref"]
OPS = ("adain", "adain_from_style")
SPECS = {"adain": ADAIN, "adain_from_style": ADAIN_FROM_STYLE}
REFERENCES = {"adain": adain_ref, "adain_from_style": adain_from_style_ref}


def backend_param(name: str):
    marks = [pytest.mark.triton] if name == "triton" else []
    return pytest.param(name, marks=marks, id=name)


BACKEND_PARAMS = [backend_param(b) for b in FAST_BACKENDS]


def make_inputs(op: str, shape, dtype=torch.float32, layout="contiguous", style_layout=None):
    """Content with a non-zero mean; for adain_from_style a style map of another spatial size."""
    n, c, h, w = shape
    content = make_feature_map(shape, dtype, layout, seed=0, offset=0.5, scale=2.0)
    if op == "adain":
        return (content, *make_style_vectors(n, c, dtype))
    style_shape = (n, c, max(1, h - 1), w + 2)
    style = make_feature_map(style_shape, dtype, style_layout or layout, seed=2, offset=-1.0, scale=0.7)
    return content, style


def run(op: str, args, impl: str) -> torch.Tensor:
    return getattr(fastgen.ops, op)(*args, EPS, impl=impl)


def skip_if_rejected(op: str, backend: str, args) -> None:
    if reasons := SPECS[op].backend(backend).reasons(args[0].device.type, args):
        pytest.skip(f"{backend} rejects this input: {'; '.join(reasons)}")


def leaf_copies(args):
    return [a.detach().clone().requires_grad_(True) for a in args]


def grads_of(fn, args, grad_out):
    leaves = leaf_copies(args)
    out = fn(*leaves)
    return out, torch.autograd.grad(out, leaves, grad_out)


# ---------------------------------------------------------------- parity per backend

@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_forward_and_gradients_match_reference(backend, op, dtype, shape, layout):
    args = make_inputs(op, shape, dtype, layout)
    skip_if_rejected(op, backend, args)
    grad_out = make_feature_map(shape, dtype, seed=5)
    out, grads = grads_of(lambda *a: run(op, a, backend), args, grad_out)
    ref_out, ref_grads = grads_of(lambda *a: REFERENCES[op](*a, EPS), args, grad_out)

    assert out.stride() == torch.empty_like(args[0]).stride(), "output must keep the layout of content"
    assert_close(out, ref_out, dtype, msg=f"{backend} forward")
    # Gradients sum over a plane, so their rounding grows with its size.
    plane = max(shape[2] * shape[3], args[-1].shape[-2] * args[-1].shape[-1])
    for name, got, want in zip(("content", "arg1", "arg2"), grads, ref_grads):
        assert got.shape == want.shape
        assert_close(got, want, dtype, scale=max(1.0, plane ** 0.5 / 4), msg=f"{backend} grad of {name}")


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("layouts", [("contiguous", "channels_last"), ("channels_last", "strided")])
def test_from_style_with_mixed_layouts(backend, layouts):
    args = make_inputs("adain_from_style", (2, 6, 9, 11), torch.float32, *layouts)
    grad_out = make_feature_map((2, 6, 9, 11), seed=5, layout="channels_last")
    out, grads = grads_of(lambda *a: run("adain_from_style", a, backend), args, grad_out)
    ref_out, ref_grads = grads_of(lambda *a: adain_from_style_ref(*a, EPS), args, grad_out)
    assert_close(out, ref_out)
    for got, want in zip(grads, ref_grads):
        assert_close(got, want, scale=4)


@pytest.mark.parametrize("backend", ["ref", *BACKEND_PARAMS])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 2, 1, 1)], ids=str)
def test_zero_variance_planes_stay_finite(backend, op, shape):
    """Constant content (and style) planes: no NaN anywhere, and the output is the style mean."""
    args = [torch.full_like(a, 3.0) if a.dim() == 4 else a for a in make_inputs(op, shape, torch.float32)]
    grad_out = make_feature_map(shape, seed=5)
    out, grads = grads_of(lambda *a: run(op, a, backend), args, grad_out)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    expected_mean = args[1] if op == "adain" else torch.full(shape[:2], 3.0)
    assert_close(out, expected_mean[..., None, None].expand(shape))


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_backward_ops_match_reference_formulas(backend):
    content, mean, std = make_inputs("adain", (2, 3, 6, 5), torch.float64)
    grad_out = make_feature_map((2, 3, 6, 5), torch.float64, seed=5)
    for got, want in zip(torch.ops.fastgen.adain_backward(grad_out, content, mean, std, EPS, backend),
                         adain_backward_ref(grad_out, content, mean, std, EPS)):
        assert_close(got, want)
    content, style = make_inputs("adain_from_style", (2, 3, 6, 5), torch.float64)
    for got, want in zip(torch.ops.fastgen.adain_from_style_backward(grad_out, content, style, EPS, backend),
                         adain_from_style_backward_ref(grad_out, content, style, EPS)):
        assert_close(got, want)


def test_reference_backward_formulas_match_autograd():
    """The hand-written backward references (the kernels' spec) equal autograd of the forward."""
    for op, backward_ref in (("adain", adain_backward_ref), ("adain_from_style", adain_from_style_backward_ref)):
        args = make_inputs(op, (2, 3, 7, 4), torch.float64)
        grad_out = make_feature_map((2, 3, 7, 4), torch.float64, seed=5)
        _, expected = grads_of(lambda *a: REFERENCES[op](*a, EPS), args, grad_out)
        for got, want in zip(backward_ref(grad_out, *args, EPS), expected):
            assert_close(got, want)


# ---------------------------------------------------------------- torch.library and autograd checks

def _registered_calls(backend):
    shape = (2, 3, 5, 4)
    content, mean, std = make_inputs("adain", shape)
    _, style = make_inputs("adain_from_style", shape)
    grad_out = make_feature_map(shape, seed=5)
    return [
        ("adain", (content, mean, std, EPS, backend)),
        ("adain_backward", (grad_out, content, mean, std, EPS, backend)),
        ("adain_from_style", (content, style, EPS, backend)),
        ("adain_from_style_backward", (grad_out, content, style, EPS, backend)),
    ]


@pytest.mark.parametrize("backend", ["ref", *BACKEND_PARAMS])
def test_opcheck_every_registered_op(backend):
    for name, args in _registered_calls(backend):
        args = tuple(a.requires_grad_(True) if isinstance(a, torch.Tensor) and name in OPS else a
                     for a in args)
        torch.library.opcheck(getattr(torch.ops.fastgen, name).default, args)


@pytest.mark.parametrize("backend", ["ref", *BACKEND_PARAMS])
@pytest.mark.parametrize("op", OPS)
def test_gradcheck_and_gradgradcheck_float64(backend, op):
    args = leaf_copies(make_inputs(op, (2, 3, 4, 3), torch.float64))
    fn = lambda *a: run(op, a, backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("op", OPS)
def test_torch_compile_fullgraph_matches_eager(op):
    backend = "cpu" if "cpu" in FAST_BACKENDS else "ref"
    args = make_inputs(op, (2, 4, 6, 5))
    grad_out = make_feature_map((2, 4, 6, 5), seed=5)
    eager = lambda *a: run(op, a, backend)  # noqa: E731
    compiled = torch.compile(eager, fullgraph=True)
    out, grads = grads_of(compiled, args, grad_out)
    ref_out, ref_grads = grads_of(eager, args, grad_out)
    assert_close(out, ref_out)
    for got, want in zip(grads, ref_grads):
        assert_close(got, want)


@pytest.mark.skipif("cpu" not in FAST_BACKENDS, reason="the C++ extension is not built")
@settings(max_examples=40, deadline=None, derandomize=True)
@given(n=st.integers(1, 3), c=st.integers(1, 6), h=st.integers(1, 24), w=st.integers(1, 24),
       hs=st.integers(1, 24), ws=st.integers(1, 24), layout=st.sampled_from(LAYOUTS),
       scale=st.floats(1e-2, 1e2), offset_ratio=st.floats(-10, 10))
def test_hypothesis_cpu_matches_reference(n, c, h, w, hs, ws, layout, scale, offset_ratio):
    """Any shape, layout, scale and offset of the values (float64: this is about the kernel's logic)."""
    dtype = torch.float64
    content = make_feature_map((n, c, h, w), dtype, layout, seed=n * c, offset=offset_ratio * scale, scale=scale)
    style = make_feature_map((n, c, hs, ws), dtype, layout, seed=1000 + h * w, offset=-offset_ratio, scale=1 / scale)
    grad_out = make_feature_map((n, c, h, w), dtype, seed=2000 + hs)
    args = (content, style)
    out, grads = grads_of(lambda *a: run("adain_from_style", a, "cpu"), args, grad_out)
    ref_out, ref_grads = grads_of(lambda *a: adain_from_style_ref(*a, EPS), args, grad_out)
    assert_close(out, ref_out)
    # Each gradient relative to the size of the terms it sums: the content gradient is
    # std_y * rstd * (g - ...) and cancels to ~0 on tiny planes (exactly 0 when H*W == 1).
    std_y = style_stats_ref(style, EPS)[1]
    rstd = torch.rsqrt(content.var(dim=(2, 3), correction=0) + EPS)
    natural = ((std_y * rstd).max() * grad_out.abs().max(), ref_grads[1].abs().max().clamp_min(1e-300))
    for got, want, norm in zip(grads, ref_grads, natural):
        assert_close(got / norm, want / norm)


# ---------------------------------------------------------------- public API, module and errors

def test_adain_accepts_n_c_1_1_style_vectors():
    content, mean, std = make_inputs("adain", (2, 3, 4, 4))
    assert_close(fastgen.ops.adain(content, mean[..., None, None], std[..., None, None]),
                 adain_ref(content, mean, std, EPS))


@pytest.mark.parametrize("backend", ["ref", *BACKEND_PARAMS])
def test_nn_adain_module(backend):
    torch.manual_seed(0)
    layer = fastgen.nn.AdaIN(num_features=4, style_dim=6, impl=backend)
    x = make_feature_map((3, 4, 5, 5))
    w = torch.randn(3, 6)
    out = layer(x, w)
    scale, bias = layer.affine(w).chunk(2, dim=1)
    assert_close(out, adain_ref(x, bias, scale, layer.eps))
    out.square().sum().backward()
    assert layer.affine.weight.grad is not None and layer.affine.weight.grad.abs().sum() > 0
    with torch.no_grad():  # untrained: scale 1, bias 0 -> an instance norm
        layer.affine.weight.zero_()
    assert_close(layer(x, w), torch.nn.functional.instance_norm(x, eps=layer.eps))


def _bad_calls():
    x = make_feature_map((2, 3, 4, 4))
    m, s = make_style_vectors(2, 3)
    return [
        ("3-D content", lambda: fastgen.ops.adain(x[0], m, s), ValueError, "content"),
        ("content not a tensor", lambda: fastgen.ops.adain(x.tolist(), m, s), TypeError, "content"),
        ("integer content", lambda: fastgen.ops.adain(x.long(), m.long(), s.long()), TypeError, "content"),
        ("empty content", lambda: fastgen.ops.adain(x[:0], m[:0], s[:0]), ValueError, "content"),
        ("style_mean shape", lambda: fastgen.ops.adain(x, m[:, :2], s), ValueError, "style_mean"),
        ("style_std N", lambda: fastgen.ops.adain(x, m, s[:1]), ValueError, "style_std"),
        ("style_std dtype", lambda: fastgen.ops.adain(x, m, s.double()), TypeError, "style_std"),
        ("style_mean device", lambda: fastgen.ops.adain(x, m.to("meta"), s), ValueError, "style_mean"),
        ("negative eps", lambda: fastgen.ops.adain(x, m, s, -1e-5), ValueError, "eps"),
        ("zero eps", lambda: fastgen.ops.adain(x, m, s, 0.0), ValueError, "eps"),
        ("style C", lambda: fastgen.ops.adain_from_style(x, x[:, :2]), ValueError, "style"),
        ("style rank", lambda: fastgen.ops.adain_from_style(x, x[0]), ValueError, "style"),
        ("style dtype", lambda: fastgen.ops.adain_from_style(x, x.half()), TypeError, "style"),
        ("unknown impl", lambda: fastgen.ops.adain(x, m, s, impl="fast"), ValueError, "impl"),
    ]


@pytest.mark.parametrize("case", _bad_calls(), ids=lambda c: c[0])
def test_bad_input_raises_naming_the_argument(case):
    _, call, error, argument = case
    with pytest.raises(error, match=argument):
        call()


def test_forcing_an_unavailable_backend_says_why():
    args = make_inputs("adain", (1, 2, 3, 3))
    with pytest.raises(BackendUnavailableError, match="backend 'cuda' cannot run this input: .*CUDA"):
        fastgen.ops.adain(*args, impl="cuda")


def test_fastgen_backend_env_forces_reference(monkeypatch):
    args = make_inputs("adain", (1, 2, 3, 3))
    monkeypatch.setenv("FASTGEN_BACKEND", "ref")
    assert ADAIN.select("auto", args)[0] == "ref"
    for backend in FAST_BACKENDS:  # an explicit impl= wins over the environment
        assert ADAIN.select(backend, args)[0] == backend
    monkeypatch.setenv("FASTGEN_BACKEND", "bogus")
    with pytest.raises(ValueError, match="FASTGEN_BACKEND"):
        fastgen.ops.adain(*args)


@pytest.mark.skipif(os.environ.get("FASTGEN_NO_EXT") == "1", reason="pure-Python install requested")
def test_extension_is_built_and_auto_picks_it():
    assert _backends.cext_reason() is None
    assert ADAIN.select("auto", make_inputs("adain", (1, 2, 3, 3)))[0] == "cpu"


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, check=True)


def test_fallback_with_extension_disabled():
    code = """
import torch, fastgen
from fastgen.ops.adain import ADAIN_FROM_STYLE
from fastgen.ops.adain.reference import adain_from_style_ref
x, s = torch.randn(2, 3, 4, 5, requires_grad=True), torch.randn(2, 3, 6, 2)
assert ADAIN_FROM_STYLE.select("auto", (x, s, 1e-5))[0] == "ref"
out = fastgen.ops.adain_from_style(x, s)
torch.testing.assert_close(out, adain_from_style_ref(x, s, 1e-5))
out.sum().backward()
try:
    fastgen.ops.adain_from_style(x, s, impl="cpu")
except fastgen.ops.BackendUnavailableError as e:
    print(e)
"""
    result = _python(code, FASTGEN_DISABLE_EXT="1")
    assert "disabled by FASTGEN_DISABLE_EXT=1" in result.stdout


def test_fastgen_info_cli_lists_backends_per_op():
    result = subprocess.run([sys.executable, "-m", "fastgen", "info"], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "FASTGEN_DISABLE_EXT": "1"}, check=True)
    for op in ("adain", "adain_backward", "adain_from_style", "adain_from_style_backward"):
        assert f"fastgen::{op}\n" in result.stdout
    assert "cpu      unavailable: disabled by FASTGEN_DISABLE_EXT=1" in result.stdout
    assert f"torch            {torch.__version__}" in result.stdout


@pytest.mark.skipif("cpu" not in FAST_BACKENDS, reason="the C++ extension is not built")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cpu_outputs_reuse_freed_buffers(layout):
    """Outputs of >= 1 MiB come from the output cache: a freed buffer is handed out again."""
    fastgen.ops.cpu_cache_clear()
    shape = (1, 4, 256, 257)
    args = make_inputs("adain_from_style", shape, torch.float32, layout)
    first = run("adain_from_style", args, "cpu")
    address = first.data_ptr()
    hits = fastgen.ops.cpu_cache_info()["hits"]
    del first
    again = run("adain_from_style", args, "cpu")
    assert again.data_ptr() == address and fastgen.ops.cpu_cache_info()["hits"] == hits + 1
    assert again.stride() == torch.empty_like(args[0]).stride()
    assert_close(again, adain_from_style_ref(*args, EPS))
    again.resize_(2, *shape[1:])  # cached storage stays resizable like torch's own
    try:
        fastgen.ops.cpu_cache_set_limit(0)
        del again
        assert fastgen.ops.cpu_cache_info()["buffers"] == 0
    finally:
        fastgen.ops.cpu_cache_set_limit(1024)


def test_cpu_cache_limit_rejects_negative():
    with pytest.raises(ValueError, match="megabytes"):
        fastgen.ops.cpu_cache_set_limit(-1)
