"""fastgen::sample_pdf (NeRF hierarchical sampling): every backend against the plain-torch reference."""
from __future__ import annotations

import pytest
import torch

from fastgen.ops.nerf.pdf import SAMPLE_PDF, sample_pdf
from fastgen.ops.nerf.reference import pdf_cdf_ref, sample_pdf_nerf_pytorch, sample_pdf_ref
from fastgen.testing import assert_close, backends_for

BACKENDS = [pytest.param(b, marks=[pytest.mark.triton] if b == "triton" else [], id=b)
            for b in backends_for(SAMPLE_PDF) if b != "ref"]
S_VALUES = (1, 2, 63, 64, 65, 127)
N_VALUES = (1, 64, 129)


def make_rays(rays, s, dtype=torch.float32, *, seed=0, near=2.0, far=6.0):
    """Sorted edges [rays, s + 1] in [near, far] and weights [rays, s] in [0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    bins = torch.sort(near + (far - near) * torch.rand(rays, s + 1, generator=gen, dtype=torch.float64), -1).values
    weights = torch.rand(rays, s, generator=gen, dtype=torch.float64)
    return bins.to(dtype), weights.to(dtype)


def rays_for(backend, rays):
    return min(rays, 6) if backend == "triton" else rays  # the interpreter runs a program at a time


def expected(bins, weights, n, deterministic, seed):
    """The reference on the u that sample_pdf draws for this seed."""
    u = None if deterministic else torch.rand(weights.shape[0], n, generator=torch.Generator().manual_seed(seed),
                                              dtype=weights.dtype)
    return sample_pdf_ref(bins, weights, u, n)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "rand"])
@pytest.mark.parametrize("n", N_VALUES)
@pytest.mark.parametrize("s", S_VALUES)
def test_matches_reference(backend, s, n, deterministic):
    bins, weights = make_rays(rays_for(backend, 37), s, seed=s + n)
    weights[0] = 0  # a ray of zero weights: uniform
    got = sample_pdf(bins, weights, n, deterministic, generator=torch.Generator().manual_seed(3), impl=backend)
    assert got.shape == (bins.shape[0], n) and got.dtype == torch.float32
    assert_close(got, expected(bins, weights, n, deterministic, 3))


# Past 128 CDF values the CPU kernel binary-searches; the Triton backend takes up to 1024.
@pytest.mark.parametrize("backend, s", [pytest.param(*b.values, s, marks=b.marks, id=f"{b.id}-{s}")
                                        for b in BACKENDS for s in (3, 64, 200, 1500)
                                        if b.values[0] != "triton" or s <= 200])
@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "rand"])
def test_float64_and_long_cdfs(backend, s, deterministic):
    bins, weights = make_rays(rays_for(backend, 50), s, torch.float64, seed=s)
    got = sample_pdf(bins, weights, 33, deterministic, generator=torch.Generator().manual_seed(4), impl=backend)
    assert_close(got, expected(bins, weights, 33, deterministic, 4))


@pytest.mark.parametrize("backend", ["ref", *BACKENDS])
def test_u_on_cdf_values_lands_on_edges(backend):
    """Exact ties: u equal to a CDF value counts that value as <= u (right=True), so the sample is the
    interval's lower edge exactly; u = 0 gives the first edge and u = 1 (the last CDF value) the last."""
    bins, weights = make_rays(4, 9, seed=5)
    weights[1] = 0
    weights[2, 4:] = 0  # empty intervals: their CDF steps are below 1e-5, several u tie with one value
    cdf = pdf_cdf_ref(weights)
    got = SAMPLE_PDF.call(bins, weights, cdf.clone(), cdf.shape[1], impl=backend)
    assert_close(got, sample_pdf_ref(bins, weights, cdf, cdf.shape[1]), scale=0)
    assert torch.equal(got[:, 0], bins[:, 0]) and torch.equal(got[:, -1], bins[:, -1])
    steps = cdf.diff(dim=-1)
    wide = torch.cat([steps >= 1e-5, torch.zeros(4, 1, dtype=torch.bool)], -1)  # intervals that start at cdf[k]
    assert torch.equal(got[wide], bins[wide])


@pytest.mark.parametrize("backend", ["ref", *BACKENDS])
def test_one_hot_and_zero_weights(backend):
    s, n = 16, 65
    bins = torch.linspace(0, 1, s + 1).expand(3, s + 1).contiguous()
    weights = torch.zeros(3, s)
    weights[1, 5] = 1.0
    weights[2, 0] = 1.0
    got = sample_pdf(bins, weights, n, impl=backend)
    # Zero weights: the uniform pdf, so on uniform edges the inverse CDF is the identity.
    assert_close(got[0], torch.linspace(0, 1, n), scale=10)
    # One hot: all but the ends (u within ~1e-4 of 0 or 1) fall in the hot interval.
    inner = got[1, 1:-1]
    assert bool(((inner >= bins[1, 5]) & (inner <= bins[1, 6])).all())
    assert_close(got, sample_pdf_ref(bins, weights, None, n))
    assert float(got[2, -1]) == 1.0 and bool((got[2, :-1] <= 1 / s).all())


@pytest.mark.parametrize("backend", ["ref", *BACKENDS])
def test_samples_in_range_and_deterministic_sorted(backend):
    bins, weights = make_rays(rays_for(backend, 64), 63, seed=6)
    weights[::3] **= 8  # peaky
    for deterministic in (True, False):
        got = sample_pdf(bins, weights, 128, deterministic, generator=torch.Generator().manual_seed(0), impl=backend)
        assert bool(((got >= bins[:, :1]) & (got <= bins[:, -1:])).all())
        if deterministic:
            assert bool((got.diff(dim=-1) >= 0).all())


@pytest.mark.parametrize("backend", ["ref", *BACKENDS])
def test_non_contiguous_inputs_and_batch_dims(backend):
    bins, weights = make_rays(12, 20, seed=7)
    wide_bins = torch.zeros(12, 2 * 21)
    wide_bins[:, ::2] = bins
    strided_bins, strided_weights = wide_bins[:, ::2], weights.t().contiguous().t()
    assert not strided_bins.is_contiguous() and not strided_weights.is_contiguous()
    got = sample_pdf(strided_bins, strided_weights, 17, impl=backend)
    assert_close(got, sample_pdf_ref(bins, weights, None, 17))
    batched = sample_pdf(bins.reshape(3, 4, 21), weights.reshape(3, 4, 20), 17, False,
                         generator=torch.Generator().manual_seed(1), impl=backend)
    assert batched.shape == (3, 4, 17)
    assert_close(batched.reshape(12, 17), expected(bins, weights, 17, False, 1))


def test_matches_nerf_pytorch_formulation():
    """The spec normalizes after the cumsum; nerf-pytorch before. On weights whose CDF steps are all well
    above 1e-5 the two agree to rounding (elsewhere u near a step of ~1e-5 may fall either side)."""
    bins, weights = make_rays(500, 63, torch.float64, seed=8)
    weights += 0.1
    for det in (True, False):
        want = sample_pdf_nerf_pytorch(bins, weights, 128, det, generator=torch.Generator().manual_seed(2))
        got = sample_pdf(bins, weights, 128, det, generator=torch.Generator().manual_seed(2))
        assert_close(got, want)


def test_generator_and_no_gradient():
    bins, weights = make_rays(10, 8, seed=9)
    weights.requires_grad_()
    a = sample_pdf(bins, weights, 5, False, generator=torch.Generator().manual_seed(11))
    b = sample_pdf(bins, weights, 5, False, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a, b) and not a.requires_grad
    assert not sample_pdf(bins.requires_grad_(), weights, 5).requires_grad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_is_computed_in_float32(dtype):
    bins, weights = make_rays(20, 15, seed=10)
    got = sample_pdf(bins.to(dtype), weights.to(dtype), 9)
    assert got.dtype == dtype
    want = sample_pdf_ref(bins.to(dtype).float(), weights.to(dtype).float(), None, 9)
    assert_close(got, want.to(dtype))


def test_empty_batch():
    assert sample_pdf(torch.zeros(0, 5), torch.zeros(0, 4), 3).shape == (0, 3)


@pytest.mark.parametrize("backend", ["ref", *BACKENDS])
def test_opcheck(backend):
    bins, weights = make_rays(6, 7, seed=12)
    torch.library.opcheck(SAMPLE_PDF.op, (bins, weights, None, 9, backend))
    torch.library.opcheck(SAMPLE_PDF.op, (bins, weights, torch.rand(6, 9), 9, backend))


def test_torch_compile_fullgraph_matches_eager():
    bins, weights = make_rays(40, 31, seed=13)

    def fine_samples(b, w):
        coarse = 0.5 * (b[:, 1:] + b[:, :-1])
        return torch.sort(torch.cat([coarse, sample_pdf(b, w, 64, impl="cpu")], -1), -1).values

    compiled = torch.compile(fine_samples, fullgraph=True)(bins, weights)
    assert_close(compiled, fine_samples(bins, weights))


def _bad_calls():
    bins, weights = make_rays(4, 6)
    return [
        ("bins shape", lambda: sample_pdf(bins[:, :-1], weights, 8), ValueError, r"bins must be \[\.\.\., S \+ 1\]"),
        ("batch mismatch", lambda: sample_pdf(bins[:3], weights, 8), ValueError, "bins must be"),
        ("S = 0", lambda: sample_pdf(bins[:, :1], weights[:, :0], 8), ValueError, "S >= 1"),
        ("negative weight", lambda: sample_pdf(bins, weights - 0.5, 8), ValueError, "weights must be finite and >= 0"),
        ("NaN weight", lambda: sample_pdf(bins, weights.index_fill(1, torch.tensor([2]), float("nan")), 8),
         ValueError, "weights must be finite"),
        ("Inf weight", lambda: sample_pdf(bins, weights.index_fill(1, torch.tensor([2]), float("inf")), 8),
         ValueError, "weights must be finite"),
        ("NaN bins", lambda: sample_pdf(bins.index_fill(1, torch.tensor([3]), float("nan")), weights, 8),
         ValueError, "sorted"),
        ("Inf bins", lambda: sample_pdf(bins.index_fill(1, torch.tensor([6]), float("inf")), weights, 8),
         ValueError, "NaN or Inf"),
        ("unsorted bins", lambda: sample_pdf(bins.flip(-1), weights, 8), ValueError, "sorted"),
        ("n_samples 0", lambda: sample_pdf(bins, weights, 0), ValueError, "n_samples must be an int >= 1"),
        ("n_samples float", lambda: sample_pdf(bins, weights, 2.0), ValueError, "n_samples"),
        ("integer weights", lambda: sample_pdf(bins.long(), weights.long(), 8), TypeError, "weights must be float"),
        ("dtype mismatch", lambda: sample_pdf(bins.double(), weights, 8), TypeError, "dtype of weights"),
        ("not a tensor", lambda: sample_pdf(bins.tolist(), weights, 8), TypeError, "bins must be a torch.Tensor"),
        ("generator", lambda: sample_pdf(bins, weights, 8, False, generator=3), TypeError, "generator"),
        ("bad impl", lambda: sample_pdf(bins, weights, 8, impl="fast"), ValueError, "impl"),
    ]


@pytest.mark.parametrize("case", _bad_calls(), ids=lambda c: c[0])
def test_bad_input_raises_a_clear_error(case):
    _, call, error, match = case
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("backend", ["ref", *BACKENDS])
def test_bad_values_raise_on_every_backend(backend):
    """The C++ kernel checks values in its own pass; the other backends get the Python checks."""
    bins, weights = make_rays(4, 6)
    bad = [(bins, weights.index_fill(1, torch.tensor([2]), -1.0), "weights must be finite and >= 0"),
           (bins, weights.index_fill(1, torch.tensor([0]), float("nan")), "weights must be finite and >= 0"),
           (bins.index_fill(1, torch.tensor([0]), -float("inf")), weights, "bins contains NaN or Inf"),
           (bins.index_fill(1, torch.tensor([4]), float("nan")), weights, "bins must be sorted"),
           (bins.flip(-1), weights, "bins must be sorted")]
    for b, w, match in bad:
        for deterministic in (True, False):
            with pytest.raises(ValueError, match=match):
                sample_pdf(b, w, 8, deterministic, impl=backend)


@pytest.mark.skipif("cpu" not in backends_for(SAMPLE_PDF), reason="the C++ extension is not built")
def test_cpp_kernel_checks_its_arguments():
    bins, weights = make_rays(4, 6)
    with pytest.raises(RuntimeError, match="u must be"):
        SAMPLE_PDF.call(bins, weights, torch.rand(4, 3), 8, impl="cpu")
    with pytest.raises(RuntimeError, match="bins must be"):
        SAMPLE_PDF.call(bins[:, 1:], weights, None, 8, impl="cpu")
