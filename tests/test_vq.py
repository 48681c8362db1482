"""Parity of every vq_nearest / vq_cluster_stats backend with the float64 reference."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastgen
from fastgen.ops.vq import VQ_CLUSTER_STATS, VQ_NEAREST_L2
from fastgen.ops.vq.reference import vq_cluster_stats_ref, vq_nearest_l2_ref
from fastgen.testing import assert_close, backends_for, peak_memory_increase

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# (N, K, D): single rows and codes, primes, D off every SIMD width, K past one codebook block.
SHAPES = ((1, 1, 1), (7, 3, 3), (33, 17, 20), (100, 40, 64), (257, 513, 17), (1000, 1030, 100))
# The Triton interpreter runs a program at a time in Python: small shapes only.
TRITON_SHAPES = SHAPES[:4]
NEAR_TIE_RTOL = 1e-6


def backend_params(spec):
    return [pytest.param(b, marks=[pytest.mark.triton] if b == "triton" else [], id=b)
            for b in backends_for(spec) if b != "ref"]


NEAREST_BACKENDS = backend_params(VQ_NEAREST_L2)
STATS_BACKENDS = backend_params(VQ_CLUSTER_STATS)


def make_inputs(n, k, d, dtype=torch.float32, *, seed=0, clustered=False):
    gen = torch.Generator().manual_seed(seed)
    if clustered:  # codes in tight groups around a few centers, z near them: many near-ties
        centers = torch.randn(max(1, k // 8), d, generator=gen, dtype=torch.float64)
        codebook = centers[torch.arange(k) % centers.shape[0]] + 1e-3 * torch.randn(k, d, generator=gen,
                                                                                      dtype=torch.float64)
        z = centers[torch.randint(0, centers.shape[0], (n,), generator=gen)] + 0.05 * torch.randn(
            n, d, generator=gen, dtype=torch.float64)
    else:
        z = torch.randn(n, d, generator=gen, dtype=torch.float64)
        codebook = torch.randn(k, d, generator=gen, dtype=torch.float64)
    return z.to(dtype), codebook.to(dtype)


def assert_nearest(z, codebook, indices, distances, dtype):
    """indices are the float64 argmin, except where the chosen code is a proven near-tie: its float64
    distance within NEAR_TIE_RTOL of the minimum. distances are |z - e_idx|^2 of the chosen code."""
    zd, ed = z.double(), codebook.double()
    all_distances = torch.cdist(zd, ed).square()
    best = all_distances.min(1).values
    chosen = all_distances.gather(1, indices.unsqueeze(1)).squeeze(1)
    differs = indices != all_distances.argmin(1)
    scale = best.abs() + zd.square().sum(1) + ed.square().sum(1).max()  # cancellation in |z|^2 + |e|^2 - 2 z.e
    near_tie = (chosen - best).abs() <= NEAR_TIE_RTOL * scale
    assert bool((~differs | near_tie).all()), f"{int((differs & ~near_tie).sum())} rows chose a farther code"
    assert distances.dtype == dtype and indices.dtype == torch.int64
    expected = (zd - ed[indices]).square().sum(1)
    assert_close(distances, expected.to(dtype), scale=4 * max(1.0, float(expected.abs().max())))


def skip_if_rejected(spec, backend, args):
    if backend != "ref" and (reasons := spec.backend(backend).reasons(args[0].device.type, args)):
        pytest.skip(f"{backend} rejects this input: {'; '.join(reasons)}")


@pytest.mark.parametrize("backend", ["ref", *NEAREST_BACKENDS])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_nearest_matches_float64(backend, dtype, shape):
    if backend == "triton" and shape not in TRITON_SHAPES:
        pytest.skip("the Triton interpreter is too slow for this shape")
    z, codebook = make_inputs(*shape, dtype)
    skip_if_rejected(VQ_NEAREST_L2, backend, (z, codebook))
    indices, distances = fastgen.ops.vq_nearest(z, codebook, impl=backend)
    assert_nearest(z.float() if dtype in (torch.float16, torch.bfloat16) else z,
                   codebook.float() if dtype in (torch.float16, torch.bfloat16) else codebook,
                   indices, distances, dtype)


@pytest.mark.parametrize("backend", ["ref", *NEAREST_BACKENDS])
def test_clustered_codebook_near_ties(backend):
    """Codes 1e-3 apart around shared centers: a filter on rounded scores must fall back to exact ones."""
    shape = (64, 40, 16) if backend == "triton" else (3000, 1024, 64)
    z, codebook = make_inputs(*shape, clustered=True, seed=3)
    indices, distances = fastgen.ops.vq_nearest(z, codebook, impl=backend)
    assert_nearest(z, codebook, indices, distances, torch.float32)


@pytest.mark.parametrize("backend", ["ref", *NEAREST_BACKENDS])
def test_exact_ties_pick_the_lowest_index(backend):
    z, codebook = make_inputs(50, 6, 8, seed=1)
    duplicated = torch.cat([codebook, codebook, codebook[:3]])  # code j == code j + 6 (== j + 12 for j < 3)
    indices, _ = fastgen.ops.vq_nearest(z, duplicated, impl=backend)
    torch.testing.assert_close(indices, vq_nearest_l2_ref(z.double(), codebook.double())[0])
    # z exactly equal to a code: distance 0, and the first copy of it.
    indices, distances = fastgen.ops.vq_nearest(duplicated[[7, 2, 13]].clone(), duplicated, impl=backend)
    assert indices.tolist() == [1, 2, 1] and distances.abs().max() == 0


@pytest.mark.parametrize("backend", ["ref", *NEAREST_BACKENDS])
def test_non_contiguous_inputs(backend):
    z, codebook = make_inputs(40, 12, 20, seed=2)
    wide = torch.zeros(40, 40)
    wide[:, ::2] = z
    indices, distances = fastgen.ops.vq_nearest(wide[:, ::2], codebook.t().contiguous().t(), impl=backend)
    expected = vq_nearest_l2_ref(z, codebook)
    torch.testing.assert_close(indices, expected[0])
    assert_close(distances, expected[1])


@pytest.mark.parametrize("backend", ["ref", *NEAREST_BACKENDS])
def test_cosine_metric(backend):
    z, codebook = make_inputs(60, 25, 12, seed=4)
    z = z * torch.rand(60, 1) * 10  # norms must not matter
    indices, distances = fastgen.ops.vq_nearest(z, codebook, metric="cosine", impl=backend)
    cosine = F.normalize(z.double(), dim=1) @ F.normalize(codebook.double(), dim=1).t()
    torch.testing.assert_close(indices, cosine.argmax(1))
    assert_close(distances, (1 - cosine.max(1).values).float(), scale=10)
    assert bool((distances >= 0).all() and (distances <= 2).all())


def test_empty_z_gives_empty_results():
    indices, distances = fastgen.ops.vq_nearest(torch.empty(0, 4), torch.randn(3, 4))
    assert indices.shape == (0,) and indices.dtype == torch.int64 and distances.shape == (0,)


@pytest.mark.parametrize("backend", ["ref", *NEAREST_BACKENDS])
def test_distance_gradients(backend):
    """distances = |z - e_idx|^2 with the indices fixed: the gradient flows to z and the chosen codes."""
    z, codebook = make_inputs(30, 7, 5, seed=5)
    z, codebook = z.requires_grad_(), codebook.requires_grad_()
    indices, distances = fastgen.ops.vq_nearest(z, codebook, impl=backend)
    assert not indices.requires_grad
    weights = torch.randn(30)
    (distances * weights).sum().backward()
    z_ref, cb_ref = z.detach().clone().requires_grad_(), codebook.detach().clone().requires_grad_()
    ((z_ref - cb_ref[indices]).square().sum(1) * weights).sum().backward()
    assert_close(z.grad, z_ref.grad)
    assert_close(codebook.grad, cb_ref.grad)


def test_gradcheck_float64():
    z, codebook = make_inputs(9, 4, 3, torch.float64, seed=6)
    # Well-separated codes, so a small perturbation never changes the argmin.
    codebook = codebook * 10
    assert torch.autograd.gradcheck(lambda a, b: fastgen.ops.vq_nearest(a, b)[1],
                                    (z.requires_grad_(), codebook.requires_grad_()))
    assert torch.autograd.gradgradcheck(lambda a, b: fastgen.ops.vq_nearest(a, b)[1],
                                        (z, codebook))


# opcheck's AOT-dispatch test sums every output into one accumulator, which fails when the first
# output is int64 (the indices): that check is left out here; test_torch_compile_fullgraph_matches_eager
# runs the op through AOT autograd, backward included.
OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor")


@pytest.mark.parametrize("backend", ["ref", *NEAREST_BACKENDS])
def test_opcheck(backend):
    z, codebook = make_inputs(20, 9, 6, seed=7)
    torch.library.opcheck(VQ_NEAREST_L2.op, (z.requires_grad_(), codebook.requires_grad_(), backend),
                          test_utils=OPCHECK_UTILS)
    indices = vq_nearest_l2_ref(z, codebook)[0]
    torch.library.opcheck(torch.ops.fastgen.vq_nearest_l2_backward.default,
                          (torch.randn(20), z.detach(), codebook.detach(), indices, backend))


def test_torch_compile_fullgraph_matches_eager():
    z, codebook = make_inputs(200, 30, 16, seed=8)

    def quantize(a, b):
        indices, distances = fastgen.ops.vq_nearest(a, b)
        return b[indices], distances.mean()

    leaves = [(z.clone().requires_grad_(), codebook.clone().requires_grad_()) for _ in range(2)]
    compiled = torch.compile(quantize, fullgraph=True)(*leaves[0])
    eager = quantize(*leaves[1])
    for got, want in zip(compiled, eager):
        assert_close(got, want)
    for outputs, (a, b) in zip((compiled, eager), leaves):
        (outputs[0].square().sum() + outputs[1]).backward()
    for got, want in zip(leaves[0], leaves[1]):
        assert_close(got.grad, want.grad)


@pytest.mark.parametrize("backend", ["ref", *NEAREST_BACKENDS])
def test_fused_search_never_builds_the_distance_matrix(backend):
    """N x K float32 here is 2 GiB: the fused kernels may use at most 1% of it, the chunked reference
    (1M-score chunks plus torch temporaries of N x D, ~20 MiB) at most 5%."""
    if backend == "triton":
        pytest.skip("the Triton interpreter is too slow for this size")
    z, codebook = make_inputs(65536, 8192, 8, seed=9)
    # The same call first: lazy initialization (oneDNN primitives for these shapes) out of the way.
    fastgen.ops.vq_nearest(z, codebook, impl=backend)
    limit = 65536 * 8192 * 4 // (20 if backend == "ref" else 100)
    used = peak_memory_increase(lambda: fastgen.ops.vq_nearest(z, codebook, impl=backend))
    assert used < limit, f"{used / 2**20:.1f} MiB at peak; the limit is {limit / 2**20:.1f} MiB"


def _bad_calls():
    z, codebook = make_inputs(5, 3, 4)
    return [
        ("1-D z", lambda: fastgen.ops.vq_nearest(z[0], codebook), ValueError, "z must be 2-D"),
        ("3-D codebook", lambda: fastgen.ops.vq_nearest(z, codebook[None]), ValueError, "codebook must be 2-D"),
        ("D mismatch", lambda: fastgen.ops.vq_nearest(z, codebook[:, :3]), ValueError, "same dimension D"),
        ("K = 0", lambda: fastgen.ops.vq_nearest(z, codebook[:0]), ValueError, "K >= 1"),
        ("dtype mismatch", lambda: fastgen.ops.vq_nearest(z, codebook.double()), TypeError, "dtype of z"),
        ("integer z", lambda: fastgen.ops.vq_nearest(z.long(), codebook.long()), TypeError, "z must be float"),
        ("metric", lambda: fastgen.ops.vq_nearest(z, codebook, "l1"), ValueError, "metric"),
        ("NaN in z", lambda: fastgen.ops.vq_nearest(z.index_fill(0, torch.tensor([2]), float("nan")), codebook),
         ValueError, "z contains NaN"),
        ("Inf in codebook", lambda: fastgen.ops.vq_nearest(z, codebook.index_fill(0, torch.tensor([1]), float("inf"))),
         ValueError, "codebook contains NaN or Inf"),
        ("bad impl", lambda: fastgen.ops.vq_nearest(z, codebook, impl="fast"), ValueError, "impl"),
        ("stats: index out of range", lambda: fastgen.ops.vq_cluster_stats(z, torch.tensor([0, 1, 2, 3, 4]), 3),
         ValueError, r"indices must be in \[0, 3\)"),
        ("stats: int32 indices", lambda: fastgen.ops.vq_cluster_stats(z, torch.zeros(5, dtype=torch.int32), 3),
         ValueError, "int64"),
        ("stats: codebook_size 0", lambda: fastgen.ops.vq_cluster_stats(z, torch.zeros(5, dtype=torch.int64), 0),
         ValueError, "codebook_size"),
    ]


@pytest.mark.parametrize("case", _bad_calls(), ids=lambda c: c[0])
def test_bad_input_raises_a_clear_error(case):
    _, call, error, match = case
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("backend", ["ref", *STATS_BACKENDS])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1), (37, 5, 3), (1000, 64, 33), (4099, 300, 64)],
                         ids=lambda s: "x".join(map(str, s)))
def test_cluster_stats_match_reference(backend, dtype, shape):
    n, k, d = shape
    z, _ = make_inputs(n, 1, d, dtype, seed=10)
    indices = torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(11))
    counts, sums = fastgen.ops.vq_cluster_stats(z, indices, k, impl=backend)
    want_counts, want_sums = vq_cluster_stats_ref(z, indices, k)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    assert counts.dtype == sums.dtype == acc
    torch.testing.assert_close(counts, want_counts)
    assert_close(sums, want_sums, scale=4)
