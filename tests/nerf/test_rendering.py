"""Volume rendering: every backend of fastgen::volume_render(_weights) against the plain-torch reference,
the nerfacc-style public API in fastgen.nerf.rendering, and its errors."""
from __future__ import annotations

import pytest
import torch

from fastgen.nerf.rendering import (
    accumulate_along_rays,
    packed_info_from_ray_indices,
    render_from_density,
    render_transmittance_from_density,
    render_weight_from_alpha,
    render_weight_from_density,
    rendering,
)
from fastgen.ops.nerf.reference import (
    volume_render_backward_ref,
    volume_render_ref,
    volume_render_weights_backward_ref,
    volume_render_weights_ref,
)
from fastgen.ops.nerf.rendering import VOLUME_RENDER, VOLUME_RENDER_WEIGHTS
from fastgen.testing import assert_close, backends_for


def backend_params(spec):
    return [pytest.param(b, marks=[pytest.mark.triton] if b == "triton" else [], id=b) for b in backends_for(spec)]


RENDER_BACKENDS = backend_params(VOLUME_RENDER)
WEIGHTS_BACKENDS = backend_params(VOLUME_RENDER_WEIGHTS)
# Rays with 0, 1, a few, a chunk and a bit (17 past the C++ SIMD chunk of 16), and many (past several
# Triton chunks of 64) samples.
COUNTS = (0, 1, 5, 0, 17, 3, 200, 64, 1, 130)
# The Triton interpreter runs a program at a time in Python: fewer, shorter rays.
TRITON_COUNTS = (0, 1, 5, 0, 17, 70, 1)


def counts_for(backend):
    return TRITON_COUNTS if backend == "triton" else COUNTS


def make_rays(counts, dtype=torch.float64, channels=3, seed=0, density=8.0):
    """(sigmas, rgbs, t_starts, t_ends, packed_info): random intervals of [0, 2] per ray, densities that
    make most rays opaque part-way, so early termination stops inside them."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.tensor(counts, dtype=torch.int64)
    packed_info = torch.stack([counts.cumsum(0) - counts, counts], 1)
    n = int(counts.sum())
    t_starts = 2 * torch.rand(n, generator=gen, dtype=torch.float64)
    t_ends = t_starts + 0.1 * torch.rand(n, generator=gen, dtype=torch.float64)
    t_ends[::7] = t_starts[::7]  # empty intervals: alpha 0
    sigmas = density * torch.rand(n, generator=gen, dtype=torch.float64) ** 2
    rgbs = torch.rand(n, channels, generator=gen, dtype=torch.float64)
    return (*(t.to(dtype) for t in (sigmas, rgbs, t_starts, t_ends)), packed_info)


def grad_outputs(outputs, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype) for o in outputs]


def render_with_grads(backend, sigmas, rgbs, t_starts, t_ends, packed_info, eps):
    sigmas, rgbs = sigmas.detach().requires_grad_(), rgbs.detach().requires_grad_()
    outputs = VOLUME_RENDER.call(sigmas, rgbs, t_starts, t_ends, packed_info, eps, impl=backend)
    grads = torch.autograd.grad(outputs, (sigmas, rgbs), grad_outputs(outputs))
    return (*outputs, *grads)


def oracle_render(sigmas, rgbs, t_starts, t_ends, packed_info, eps):
    """The reference in float64, gradients by autograd (independent of the backward formulas)."""
    args = [t.double() for t in (sigmas, rgbs, t_starts, t_ends)]
    sigmas, rgbs = args[0].requires_grad_(), args[1].requires_grad_()
    outputs = volume_render_ref(sigmas, rgbs, args[2], args[3], packed_info, eps)
    grads = torch.autograd.grad(outputs, (sigmas, rgbs), grad_outputs(outputs))
    return (*outputs, *grads)


def assert_all_close(got, want, dtype, scale=1.0):
    for name, g, w in zip(("colors", "opacities", "depths", "grad_sigmas", "grad_rgbs"), got, want):
        assert g.dtype == dtype, name
        assert_close(g, w.to(dtype), scale=scale, msg=name)


@pytest.mark.parametrize("backend", RENDER_BACKENDS)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
@pytest.mark.parametrize("eps", (0.0, 1e-4, 0.05))
@pytest.mark.parametrize("channels", (3, 1, 4))
def test_volume_render_matches_reference(backend, dtype, eps, channels):
    args = make_rays(counts_for(backend), dtype, channels)
    got = render_with_grads(backend, *args, eps)
    # float32: sums over up to 200 samples of values up to ~10 (depths, and gradients with suffix sums).
    assert_all_close(got, oracle_render(*args, eps), dtype, scale=20)


@pytest.mark.parametrize("backend", WEIGHTS_BACKENDS)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
def test_volume_render_weights_match_reference(backend, dtype):
    sigmas, _, t_starts, t_ends, packed_info = make_rays(counts_for(backend), dtype)
    s = sigmas.detach().requires_grad_()
    outputs = VOLUME_RENDER_WEIGHTS.call(s, t_starts, t_ends, packed_info, impl=backend)
    (grad,) = torch.autograd.grad(outputs, s, grad_outputs(outputs))
    s64 = sigmas.double().requires_grad_()
    want = volume_render_weights_ref(s64, t_starts.double(), t_ends.double(), packed_info)
    (want_grad,) = torch.autograd.grad(want, s64, grad_outputs(want))
    for g, w in zip((*outputs, grad), (*want, want_grad)):
        assert g.dtype == dtype
        assert_close(g, w.to(dtype), scale=20)


def test_backward_references_match_autograd():
    """The closed-form backward references against autograd through the forward references."""
    sigmas, rgbs, t_starts, t_ends, packed_info = make_rays(COUNTS)
    for eps in (0.0, 0.01):
        got = volume_render_backward_ref(*grad_outputs(volume_render_ref(sigmas, rgbs, t_starts, t_ends,
                                                                         packed_info, eps)),
                                         sigmas, rgbs, t_starts, t_ends, packed_info, eps)
        want = oracle_render(sigmas, rgbs, t_starts, t_ends, packed_info, eps)[3:]
        for g, w in zip(got, want):
            assert_close(g, w)
    s = sigmas.clone().requires_grad_()
    outputs = volume_render_weights_ref(s, t_starts, t_ends, packed_info)
    grads = grad_outputs(outputs)
    (want,) = torch.autograd.grad(outputs, s, grads)
    assert_close(volume_render_weights_backward_ref(*grads, t_starts, t_ends, packed_info, *outputs), want)


@pytest.mark.parametrize("backend", RENDER_BACKENDS)
def test_gradcheck_float64(backend):
    sigmas, rgbs, t_starts, t_ends, packed_info = make_rays((0, 1, 3, 9, 2), density=20.0, seed=2)
    # The full Jacobian for the C++ kernel; a random-projection check for the slower reference (whose
    # backward formulas test_backward_references_match_autograd checks) and the Triton interpreter.
    fast = backend != "cpu"
    for eps in (0.0, 0.55):  # 0.55 stops the 9-sample ray at its 7th sample (T = 0.49), far from any T
        assert torch.autograd.gradcheck(
            lambda s, c: VOLUME_RENDER.call(s, c, t_starts, t_ends, packed_info, eps, impl=backend),
            (sigmas.requires_grad_(), rgbs.requires_grad_()), fast_mode=fast)
    assert torch.autograd.gradcheck(
        lambda s: VOLUME_RENDER_WEIGHTS.call(s, t_starts, t_ends, packed_info, impl=backend), (sigmas,),
        fast_mode=fast)


@pytest.mark.parametrize("backend", RENDER_BACKENDS)
def test_opcheck(backend):
    sigmas, rgbs, t_starts, t_ends, packed_info = make_rays((0, 1, 6, 20, 3), torch.float32, seed=3)
    sigmas.requires_grad_()
    rgbs.requires_grad_()
    torch.library.opcheck(VOLUME_RENDER.op, (sigmas, rgbs, t_starts, t_ends, packed_info, 0.01, backend))
    torch.library.opcheck(VOLUME_RENDER_WEIGHTS.op, (sigmas, t_starts, t_ends, packed_info, backend))
    outputs = volume_render_ref(sigmas.detach(), rgbs.detach(), t_starts, t_ends, packed_info, 0.01)
    torch.library.opcheck(torch.ops.fastgen.volume_render_backward.default,
                          (*grad_outputs(outputs), sigmas.detach(), rgbs.detach(), t_starts, t_ends, packed_info,
                           0.01, backend))
    weights = volume_render_weights_ref(sigmas.detach(), t_starts, t_ends, packed_info)
    torch.library.opcheck(torch.ops.fastgen.volume_render_weights_backward.default,
                          (*grad_outputs(weights), t_starts, t_ends, packed_info, *weights, backend))


@pytest.mark.parametrize("backend", RENDER_BACKENDS)
def test_early_termination_bound(backend):
    """Terminated samples hold less than eps of the weight: colors move by at most eps * max|c|, opacities by
    eps, depths by eps * max t_end; and the terminated samples get no gradient."""
    counts = (40, 64, 1, 25) if backend == "triton" else (40, 200, 1, 130, 25)
    sigmas, rgbs, t_starts, t_ends, packed_info = make_rays(counts, torch.float64, density=30.0, seed=4)
    rgbs = 4 * rgbs - 2  # any sign
    full = VOLUME_RENDER.call(sigmas, rgbs, t_starts, t_ends, packed_info, 0.0, impl=backend)
    for eps in (1e-3, 1e-2, 0.1):
        stopped = VOLUME_RENDER.call(sigmas, rgbs, t_starts, t_ends, packed_info, eps, impl=backend)
        bounds = (eps * rgbs.abs().max(), eps, eps * t_ends.max())
        for name, a, b, bound in zip(("colors", "opacities", "depths"), stopped, full, bounds):
            assert float((a - b).abs().max()) <= bound + 1e-12, name
        assert float((full[1] - stopped[1]).max()) > 0  # termination did drop weight
    _, trans, _ = volume_render_weights_ref(sigmas, t_starts, t_ends, packed_info)
    grad_sigmas, grad_rgbs = render_with_grads(backend, sigmas, rgbs, t_starts, t_ends, packed_info, 0.01)[3:]
    terminated = trans < 0.01
    assert bool(terminated.any()) and not grad_sigmas[terminated].any() and not grad_rgbs[terminated].any()


def batched_rays(n_rays, n_samples, dtype=torch.float32, seed=5):
    gen = torch.Generator().manual_seed(seed)
    steps = 0.05 * torch.rand(n_rays, n_samples, generator=gen) + 0.01
    t_ends = steps.cumsum(1)
    t_starts = t_ends - steps
    sigmas = 10 * torch.rand(n_rays, n_samples, generator=gen) ** 3
    rgbs = torch.rand(n_rays, n_samples, 3, generator=gen)
    return [t.to(dtype) for t in (t_starts, t_ends, sigmas, rgbs)]


@pytest.mark.parametrize("backend", RENDER_BACKENDS)
def test_packed_and_batched_layouts_agree(backend):
    t_starts, t_ends, sigmas, rgbs = batched_rays(7, 33)
    ray_indices = torch.arange(7).repeat_interleave(33)
    batched = render_from_density(t_starts, t_ends, sigmas, rgbs, impl=backend)
    packed = render_from_density(t_starts.reshape(-1), t_ends.reshape(-1), sigmas.reshape(-1), rgbs.reshape(-1, 3),
                                 ray_indices=ray_indices, n_rays=7, impl=backend)
    for a, b in zip(batched, packed):
        torch.testing.assert_close(a, b)
    # Batched leading dims are rays too.
    nested = render_from_density(*(t.reshape(7, 1, 33, *t.shape[2:]) for t in (t_starts, t_ends, sigmas, rgbs)),
                                 impl=backend)
    for a, b in zip(nested, batched):
        torch.testing.assert_close(a.reshape(b.shape), b)
    weights = render_weight_from_density(t_starts, t_ends, sigmas, impl=backend)
    weights_packed = render_weight_from_density(t_starts.reshape(-1), t_ends.reshape(-1), sigmas.reshape(-1),
                                                ray_indices=ray_indices, n_rays=7, impl=backend)
    for a, b in zip(weights, weights_packed):
        torch.testing.assert_close(a.reshape(-1), b)


@pytest.mark.parametrize("backend", RENDER_BACKENDS)
def test_non_contiguous_inputs(backend):
    t_starts, t_ends, sigmas, rgbs = batched_rays(9, 20)
    want = render_from_density(t_starts, t_ends, sigmas, rgbs, impl=backend)
    # Transposed storage for the [R, S] tensors, every other channel of a wider buffer for rgbs.
    wide = torch.zeros(9, 20, 6)
    wide[..., ::2] = rgbs
    got = render_from_density(*(t.t().contiguous().t() for t in (t_starts, t_ends, sigmas)), wide[..., ::2],
                              impl=backend)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", RENDER_BACKENDS)
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16), ids=str)
def test_half_inputs_are_computed_in_float32(backend, dtype):
    t_starts, t_ends, sigmas, rgbs = batched_rays(5, 30, dtype)
    sigmas.requires_grad_()
    got = render_from_density(t_starts, t_ends, sigmas, rgbs, impl=backend)
    want = render_from_density(t_starts.float(), t_ends.float(), sigmas.detach().float(), rgbs.float(), impl=backend)
    for a, b in zip(got, want):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b.to(dtype))
    got[0].sum().backward()
    assert sigmas.grad.dtype == dtype


def test_rendering_api():
    """nerfacc's rendering: the fused colors against accumulate_along_rays of the extras' weights, background,
    rgb_alpha_fn, prefix_trans and the transmittance helpers."""
    t_starts, t_ends, sigmas, rgbs = batched_rays(6, 40, torch.float64)
    ray_indices = torch.arange(6).repeat_interleave(40)
    flat = [t.reshape(-1) for t in (t_starts, t_ends, sigmas)]
    flat_rgbs = rgbs.reshape(-1, 3)
    seen = {}

    def rgb_sigma_fn(starts, ends, indices):
        seen["indices"] = indices
        return flat_rgbs, flat[2]

    bkgd = torch.tensor([0.2, 0.5, 1.0], dtype=torch.float64)
    colors, opacities, depths, extras = rendering(flat[0], flat[1], ray_indices, 6, rgb_sigma_fn=rgb_sigma_fn,
                                                  render_bkgd=bkgd, early_stop_eps=1e-3)
    assert seen["indices"] is ray_indices and colors.shape == (6, 3) and opacities.shape == depths.shape == (6, 1)
    weights = extras["weights"]
    assert_close(accumulate_along_rays(weights, flat_rgbs, ray_indices, 6) + bkgd * (1 - opacities), colors)
    assert_close(accumulate_along_rays(weights, None, ray_indices, 6), opacities)
    assert_close(accumulate_along_rays(weights, ((flat[0] + flat[1]) / 2)[:, None], ray_indices, 6), depths)
    # The same through alphas.
    alphas = 1 - torch.exp(-flat[2] * (flat[1] - flat[0]))
    by_alpha = rendering(flat[0], flat[1], ray_indices, 6, rgb_alpha_fn=lambda *_: (flat_rgbs, alphas),
                         render_bkgd=bkgd, early_stop_eps=1e-3)
    for a, b in zip(by_alpha[:3], (colors, opacities, depths)):
        assert_close(a, b)
    assert_close(by_alpha[3]["weights"], weights)
    # Batched, and the helpers.
    batched = rendering(t_starts, t_ends, rgb_sigma_fn=lambda *_: (rgbs, sigmas), render_bkgd=bkgd,
                        early_stop_eps=1e-3, return_extras=False)
    assert batched[3] == {}
    for a, b in zip(batched[:3], (colors, opacities, depths)):
        assert_close(a, b)
    w, trans, a = render_weight_from_density(t_starts, t_ends, sigmas)
    assert_close(accumulate_along_rays(w, rgbs),
                 render_from_density(t_starts, t_ends, sigmas, rgbs, early_stop_eps=0)[0])
    trans2, a2 = render_transmittance_from_density(t_starts, t_ends, sigmas)
    assert_close(trans2, trans)
    assert_close(a2, a)
    w_alpha, trans_alpha = render_weight_from_alpha(a)
    assert_close(w_alpha, w)
    assert_close(trans_alpha, trans)
    prefix = torch.rand(6, 40, dtype=torch.float64)
    w_prefix, trans_prefix, _ = render_weight_from_density(t_starts, t_ends, sigmas, prefix_trans=prefix)
    assert_close(trans_prefix, trans * prefix)
    assert_close(w_prefix, trans * prefix * a)
    torch.testing.assert_close(packed_info_from_ray_indices(torch.tensor([0, 0, 2, 2, 2]), 4),
                               torch.tensor([[0, 2], [2, 0], [2, 3], [5, 0]]))


@pytest.mark.parametrize("layout", ("batched", "packed"))
def test_torch_compile_fullgraph_matches_eager(layout):
    t_starts, t_ends, sigmas, rgbs = batched_rays(8, 24)
    ray_indices = torch.arange(8).repeat_interleave(24) if layout == "packed" else None
    if layout == "packed":
        t_starts, t_ends, sigmas, rgbs = (t.reshape(-1, *t.shape[2:]) for t in (t_starts, t_ends, sigmas, rgbs))

    def render(s, c):
        colors, opacities, depths, extras = rendering(t_starts, t_ends, ray_indices, 8,
                                                      rgb_sigma_fn=lambda *_: (c, s), early_stop_eps=1e-3)
        return colors, opacities, depths, extras["weights"]

    leaves = [(sigmas.clone().requires_grad_(), rgbs.clone().requires_grad_()) for _ in range(2)]
    compiled = torch.compile(render, fullgraph=True)(*leaves[0])
    eager = render(*leaves[1])
    for got, want in zip(compiled, eager):
        assert_close(got, want)
    for outputs in (compiled, eager):
        sum(o.sum() for o in outputs[:3]).backward()
    for got, want in zip(leaves[0], leaves[1]):
        assert_close(got.grad, want.grad)


def _bad_calls():
    t_starts, t_ends, sigmas, rgbs = (t.reshape(-1, *t.shape[2:]) for t in batched_rays(3, 4))
    ray_indices = torch.arange(3).repeat_interleave(4)

    def render(**overrides):
        kwargs = {"t_starts": t_starts, "t_ends": t_ends, "sigmas": sigmas, "rgbs": rgbs, "ray_indices": ray_indices,
                  "n_rays": 3, "early_stop_eps": 0.0, **overrides}
        return lambda: render_from_density(**kwargs)

    def with_value(t, i, value):
        t = t.clone()
        t[i] = value
        return t

    cases = [
        ("short t_ends", render(t_ends=t_ends[:-1]), ValueError, "t_ends must have the shape of sigmas"),
        ("rgbs length", render(rgbs=rgbs[:-1]), ValueError, "rgbs must be sigmas' shape"),
        ("ray_indices length", render(ray_indices=ray_indices[:-1]), ValueError, "one entry per sample"),
        ("unsorted ray_indices", render(ray_indices=ray_indices.flip(0)), ValueError, "must be sorted"),
        ("ray_indices out of range", render(n_rays=2), ValueError, r"in \[0, n_rays = 2\)"),
        ("float ray_indices", render(ray_indices=ray_indices.float()), ValueError, "int64"),
        ("both indices", render(packed_info=packed_info_from_ray_indices(ray_indices, 3)), ValueError, "not both"),
        ("inconsistent packed_info", render(ray_indices=None, n_rays=None, packed_info=torch.tensor([[0, 4], [5, 8]])),
         ValueError, "packed_info must hold"),
        ("integer sigmas", render(sigmas=sigmas.long()), TypeError, "sigmas must be float"),
        ("dtype mismatch", render(t_starts=t_starts.double()), TypeError, "dtype of sigmas"),
        ("device mismatch", render(rgbs=rgbs.to("meta")), ValueError, "device of sigmas"),
        ("eps", render(early_stop_eps=-1.0), ValueError, "early_stop_eps"),
        ("bad impl", lambda: render_from_density(t_starts, t_ends, sigmas, rgbs, ray_indices=ray_indices, n_rays=3,
                                                 impl="fast"), ValueError, "impl"),
        ("no rgb fn", lambda: rendering(t_starts, t_ends, ray_indices, 3), ValueError, "exactly one"),
        ("sigma shape from fn", lambda: rendering(t_starts, t_ends, ray_indices, 3,
                                                  rgb_sigma_fn=lambda *_: (rgbs, sigmas[:, None])),
         ValueError, "rgb_sigma_fn's sigmas"),
    ]
    params = [pytest.param(case, id=case[0]) for case in cases]
    # Sample values: every backend names the problem (the C++ kernel as a RuntimeError from TORCH_CHECK).
    for backend in backends_for(VOLUME_RENDER):
        for name, overrides, match in (
                ("NaN sigma", {"sigmas": with_value(sigmas, 5, float("nan"))}, "sigmas contains NaN"),
                ("negative interval", {"t_ends": with_value(t_ends, 6, float(t_starts[6]) - 0.01)},
                 "t_ends must be >= t_starts")):
            marks = [pytest.mark.triton] if backend == "triton" else []
            params.append(pytest.param((f"{name} ({backend})", render(impl=backend, **overrides),
                                        (ValueError, RuntimeError), match), marks=marks, id=f"{name} ({backend})"))
    return params


@pytest.mark.parametrize("case", _bad_calls())
def test_bad_input_raises_a_clear_error(case):
    _, call, error, match = case
    with pytest.raises(error, match=match):
        call()
