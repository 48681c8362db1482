"""fastgen.nn.VectorQuantizer against plain-torch references, and fastgen::vq_cluster_stats on every backend."""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from fastgen import _backends
from fastgen.nn import VectorQuantizer
from fastgen.ops.vq import VQ_CLUSTER_STATS, vq_cluster_stats
from fastgen.testing import assert_close, backends_for

BETA = 0.25
VARIANTS = [(None, "l2"), (None, "cosine"), (0.9, "l2"), (0.9, "cosine")]
VARIANT_IDS = ["grad-l2", "grad-cosine", "ema-l2", "ema-cosine"]


def make_vq(dim: int = 6, codebook_size: int = 10, seed: int = 0, **kwargs) -> VectorQuantizer:
    torch.manual_seed(seed)
    return VectorQuantizer(dim, codebook_size, commitment_weight=BETA, **kwargs)


def batch(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def nearest_ref(z: torch.Tensor, codebook: torch.Tensor, metric: str) -> torch.Tensor:
    """argmin over codes, computed from all pairwise distances in float64."""
    if metric == "cosine":
        z, codebook = F.normalize(z, dim=1), F.normalize(codebook, dim=1)
    return torch.cdist(z.double(), codebook.double()).argmin(1)


def rows_ref(z: torch.Tensor, codebook: torch.Tensor, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The vectors the losses see for z [N, D]: (z, its codes), normalized for the cosine metric."""
    codes = codebook[nearest_ref(z.detach(), codebook.detach(), metric)]
    if metric == "cosine":
        return F.normalize(z, dim=1), F.normalize(codes, dim=1)
    return z, codes


def cluster_stats_ref(z: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts and sums in float64, row by row."""
    counts = torch.zeros(k, dtype=torch.float64)
    sums = torch.zeros(k, z.shape[1], dtype=torch.float64)
    for row, code in zip(z.double(), indices.tolist()):
        counts[code] += 1
        sums[code] += row
    return counts, sums


# --- straight-through estimator and losses --------------------------------------------------


@pytest.mark.parametrize("decay, metric", VARIANTS, ids=VARIANT_IDS)
def test_straight_through_gradient(decay, metric):
    """The output is the codes; d quantized / d z is the identity (for cosine: normalization's Jacobian)."""
    vq = make_vq(decay=decay, metric=metric, threshold_dead=0)
    z = batch(4, 3, 6, seed=1).requires_grad_()
    codebook = vq.codebook.detach().clone()
    out = vq(z)
    _, codes = rows_ref(z.detach().view(-1, 6), codebook, metric)
    assert_close(out.quantized.detach(), codes.view(4, 3, 6))
    grad = batch(4, 3, 6, seed=2)
    (z_grad,) = torch.autograd.grad(out.quantized, z, grad)
    if metric == "l2":
        assert torch.equal(z_grad, grad)
    else:
        z2 = z.detach().clone().requires_grad_()
        (expected,) = torch.autograd.grad(F.normalize(z2, dim=-1), z2, grad)
        assert_close(z_grad, expected)


@pytest.mark.parametrize("decay, metric", VARIANTS, ids=VARIANT_IDS)
def test_losses_and_their_gradients_match_plain_torch(decay, metric):
    """loss = |sg(z) - e|^2 + beta |z - sg(e)|^2 (means), the first term only for a trained codebook."""
    vq = make_vq(decay=decay, metric=metric, threshold_dead=0)
    z = batch(32, 6, seed=1).requires_grad_()
    codebook = vq.codebook.detach().clone().requires_grad_()
    out = vq(z)
    out.loss.backward()

    z_ref = z.detach().clone().requires_grad_()
    zr, e = rows_ref(z_ref, codebook, metric)
    expected = BETA * (zr - e.detach()).square().mean()
    if decay is None:
        expected = expected + (zr.detach() - e).square().mean()
    expected.backward()
    assert_close(out.loss.detach(), expected.detach())
    assert_close(z.grad, z_ref.grad)
    if decay is None:
        assert_close(vq.codebook.grad, codebook.grad)
    else:
        assert not vq.codebook.requires_grad


def test_half_input_is_quantized_with_a_float32_codebook():
    vq = make_vq(decay=0.9, threshold_dead=0)
    z = batch(40, 6, seed=1, dtype=torch.float16)
    out = vq(z)
    assert out.quantized.dtype == torch.float16 and out.loss.dtype == torch.float16
    assert vq.codebook.dtype == torch.float32 and torch.isfinite(vq.codebook).all()


# --- EMA codebook ----------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_ema_update_matches_plain_torch(metric):
    decay, eps, k = 0.8, 1e-3, 7
    vq = make_vq(codebook_size=k, decay=decay, eps=eps, metric=metric, threshold_dead=0).double()
    codebook = vq.codebook.clone()
    cluster_size = torch.zeros(k, dtype=torch.float64)
    embed_sum = torch.zeros(k, 6, dtype=torch.float64)
    for step in range(4):
        z = batch(50 + step, 6, seed=10 + step, dtype=torch.float64)
        indices = nearest_ref(z, codebook, metric)
        out = vq(z)
        assert torch.equal(out.indices, indices)
        zr = F.normalize(z, dim=1) if metric == "cosine" else z
        counts = torch.bincount(indices, minlength=k).double()
        sums = torch.zeros(k, 6, dtype=torch.float64).index_add_(0, indices, zr)
        cluster_size = decay * cluster_size + (1 - decay) * counts
        embed_sum = decay * embed_sum + (1 - decay) * sums
        total = cluster_size.sum()
        smoothed = (cluster_size + eps) / (total + k * eps) * total
        # A code never chosen keeps its vector.
        codebook = torch.where(cluster_size[:, None] > 0, embed_sum / smoothed[:, None], codebook)
        assert_close(vq.cluster_size, cluster_size)
        assert_close(vq.embed_sum, embed_sum)
        assert_close(vq.codebook, codebook)
    assert (cluster_size > 0).sum() > k // 2  # the comparison covered updated codes


def test_eval_mode_changes_nothing():
    vq = make_vq(decay=0.9)
    vq.eval()
    state = {name: t.clone() for name, t in vq.state_dict().items()}
    vq(batch(30, 6, seed=1))
    assert state.keys() == {"codebook", "cluster_size", "embed_sum", "code_usage", "usage_steps"}
    for name, t in vq.state_dict().items():
        assert torch.equal(t, state[name]), name


# --- vq_cluster_stats on every backend -------------------------------------------------------

CLUSTER_SHAPES = [(0, 4, 3), (1, 1, 1), (7, 3, 5), (1000, 37, 13), (3001, 130, 257), (40, 5, 300)]


@pytest.mark.parametrize("impl", backends_for(VQ_CLUSTER_STATS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n, d, k", CLUSTER_SHAPES, ids=[f"N{n}-D{d}-K{k}" for n, d, k in CLUSTER_SHAPES])
def test_cluster_stats_backends_match_a_row_by_row_sum(impl, dtype, n, d, k):
    """Shapes include an empty batch, more codes than rows, and rows enough for every thread."""
    z = batch(n, d, seed=n + d, dtype=dtype)
    indices = torch.randint(k, (n,), generator=torch.Generator().manual_seed(k))
    counts, sums = vq_cluster_stats(z, indices, k, impl=impl)
    accumulation = torch.float64 if dtype == torch.float64 else torch.float32
    assert counts.dtype == sums.dtype == accumulation and counts.shape == (k,) and sums.shape == (k, d)
    expected_counts, expected_sums = cluster_stats_ref(z, indices, k)
    assert torch.equal(counts.double(), expected_counts)
    # Half inputs are exact in float32; the sums then round like float32 sums of up to ~n / k terms.
    assert_close(sums, expected_sums.to(accumulation), dtype=accumulation, scale=max(1.0, math.sqrt(n / k)))


@pytest.mark.parametrize("impl", backends_for(VQ_CLUSTER_STATS))
def test_cluster_stats_of_strided_z(impl):
    wide = batch(500, 20, seed=3)
    indices = torch.randint(9, (500,), generator=torch.Generator().manual_seed(0))
    counts, sums = vq_cluster_stats(wide[:, ::2], indices, 9, impl=impl)
    expected_counts, expected_sums = cluster_stats_ref(wide[:, ::2], indices, 9)
    assert torch.equal(counts.double(), expected_counts)
    assert_close(sums, expected_sums.float(), scale=10)


@pytest.mark.skipif(_backends.cext_reason() is not None, reason="needs fastgen._C")
def test_cpu_kernel_checks_the_index_range():
    """The public function checks first; the kernel checks too, since the op can be called directly."""
    z = torch.randn(300000, 2)  # enough rows for threads: the error crosses the parallel region
    for bad in (-1, 4):
        indices = torch.zeros(300000, dtype=torch.int64)
        indices[-1] = bad
        with pytest.raises(RuntimeError, match=r"indices must be in \[0, 4\)"):
            torch.ops.fastgen_C.vq_cluster_stats(z, indices, 4)
    with pytest.raises(RuntimeError, match="int64"):
        torch.ops.fastgen_C.vq_cluster_stats(z, torch.zeros(300000, dtype=torch.int32), 4)


# --- dead codes ------------------------------------------------------------------------------


@pytest.mark.parametrize("decay, metric", VARIANTS, ids=VARIANT_IDS)
def test_a_dead_code_is_replaced_by_a_batch_vector(decay, metric):
    vq = make_vq(codebook_size=4, decay=decay, metric=metric)
    z = batch(64, 6, seed=1).abs() + 0.1  # all in the positive orthant: far from code 3 in either metric
    with torch.no_grad():
        vq.codebook[3] = -100.0
        vq.codebook[:3] = z[:3]  # the others all get used
    before = vq.codebook.detach().clone()
    out = vq(z.requires_grad_())
    assert not (out.indices == 3).any()
    out.loss.backward()  # the in-place revival leaves the backward intact
    vectors = F.normalize(z.detach(), dim=1) if metric == "cosine" else z.detach()
    revived = vq.codebook[3].detach().clone()
    assert (vectors == revived).all(dim=1).any(), "code 3 is not a vector of the batch"
    # The revived code gets the uniform share back, as a grace period.
    assert (vq.code_usage[3] / (1 - vq.usage_decay)).item() == pytest.approx(1 / 4)
    if decay is None:  # otherwise codes move only by the optimizer: nothing else changed
        assert torch.equal(vq.codebook[:3].detach(), before[:3])
        vq(z.detach())
        assert torch.equal(vq.codebook[3].detach(), revived), "revived twice in a row"


def test_a_code_that_stops_being_used_dies_after_the_predicted_number_of_steps():
    """Usage is an EMA (0.99 without decay) of each code's share, bias-corrected; dead below 0.1 / K."""
    k, threshold = 4, 0.1
    vq = make_vq(dim=3, codebook_size=k, threshold_dead=threshold)
    with torch.no_grad():
        vq.codebook.copy_(torch.eye(k, 3) * 2 + torch.tensor([0.0, 0.0, 1.0]))
    codes = vq.codebook.detach().clone()
    vq(codes)  # step 1: every code used once
    # After t steps of which only the first used the last code, its corrected share is
    # (1 - d) d^(t - 1) / (1 - d^t) / k.
    d = vq.usage_decay
    expected_step = next(t for t in range(2, 10_000) if (1 - d) * d ** (t - 1) / (1 - d ** t) < threshold)
    for step in range(2, expected_step + 1):
        vq(codes[:-1])
        changed = not torch.equal(vq.codebook[-1].detach(), codes[-1])
        assert changed == (step == expected_step), f"step {step}, expected revival at {expected_step}"
    assert any(torch.equal(vq.codebook[-1].detach(), row) for row in codes[:-1])


def test_no_revival_when_threshold_is_zero():
    vq = make_vq(codebook_size=4, threshold_dead=0)
    with torch.no_grad():
        vq.codebook[3] = 100.0
    vq(batch(64, 6, seed=1))
    assert (vq.codebook[3] == 100.0).all()
    assert "code_usage" not in vq.state_dict()


# --- layouts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("decay, metric", VARIANTS, ids=VARIANT_IDS)
def test_channel_first_and_channel_last_inputs_agree(decay, metric):
    last, first = make_vq(decay=decay, metric=metric), make_vq(decay=decay, metric=metric, channel_first=True)
    for step in range(3):
        # Both revive the same codes from the same rows: the same random picks.
        x_last = batch(2, 5, 3, 6, seed=step).requires_grad_()  # [B, H, W, D]
        x_first = x_last.detach().permute(0, 3, 1, 2).clone().requires_grad_()  # [B, D, H, W]
        torch.manual_seed(step)
        out_last = last(x_last)
        torch.manual_seed(step)
        out_first = first(x_first)
        assert out_first.quantized.shape == x_first.shape
        assert out_first.indices.shape == out_last.indices.shape == (2, 5, 3)
        assert torch.equal(out_first.indices, out_last.indices)
        assert_close(out_first.quantized.permute(0, 2, 3, 1), out_last.quantized)
        for name in ("loss", "perplexity", "usage"):
            assert_close(getattr(out_first, name), getattr(out_last, name), msg=name)
        grad = batch(2, 5, 3, 6, seed=10 + step)
        (out_last.quantized * grad).sum().add(out_last.loss).backward()
        (out_first.quantized * grad.permute(0, 3, 1, 2)).sum().add(out_first.loss).backward()
        assert_close(x_first.grad.permute(0, 2, 3, 1), x_last.grad)
        assert_close(first.codebook.detach(), last.codebook.detach())


def test_other_ranks_of_input():
    vq = make_vq()
    assert vq(batch(6, seed=1)).indices.shape == ()
    assert vq(batch(2, 3, 4, 6, seed=1)).indices.shape == (2, 3, 4)
    first = make_vq(channel_first=True)
    assert first(batch(3, 6, 11, seed=1)).quantized.shape == (3, 6, 11)  # [B, D, L]
    assert first(batch(3, 6, seed=1)).indices.shape == (3,)


# --- batch statistics -------------------------------------------------------------------------


def test_perplexity_and_usage_on_a_hand_built_batch():
    vq = make_vq(dim=4, codebook_size=4).eval()
    with torch.no_grad():
        vq.codebook.copy_(10 * torch.eye(4))
    z = 10 * torch.eye(4)[[0, 0, 1, 2]] + 0.1  # counts [2, 1, 1, 0]: frequencies 1/2, 1/4, 1/4
    out = vq(z)
    assert out.indices.tolist() == [0, 0, 1, 2]
    # exp(-(1/2 ln 1/2 + 2 * 1/4 ln 1/4)) = exp(1.5 ln 2) = 2^1.5
    assert out.perplexity.item() == pytest.approx(2 ** 1.5)
    assert out.usage.item() == pytest.approx(0.75)
    out = vq(10 * torch.eye(4))
    assert out.perplexity.item() == pytest.approx(4.0) and out.usage.item() == 1.0
    out = vq(10 * torch.eye(4)[[3, 3, 3]])
    assert out.perplexity.item() == pytest.approx(1.0) and out.usage.item() == 0.25


# --- DDP -------------------------------------------------------------------------------------

DDP_STEPS = 3
DDP_DIM, DDP_CODES = 3, 5


def ddp_rank_batch(step: int, rank: int) -> torch.Tensor:
    """Each rank its own data, and its own batch size."""
    return batch(2, DDP_DIM, 3 + rank, 2, seed=100 * step + rank)  # [B, D, H, W]


def ddp_modules() -> dict[str, VectorQuantizer]:
    """Without revival (its random picks differ by design from a single process's) for the parity
    with one process, and with a code forced dead for revival across ranks, with either codebook."""
    modules = {"ema": make_vq(DDP_DIM, DDP_CODES, decay=0.8, threshold_dead=0, channel_first=True),
               "revival": make_vq(DDP_DIM, DDP_CODES, decay=0.8, channel_first=True),
               "trained-revival": make_vq(DDP_DIM, DDP_CODES, channel_first=True)}
    with torch.no_grad():
        for name in ("revival", "trained-revival"):
            modules[name].codebook[-1] = 100.0
    return modules


def _ddp_worker(rank: int, world_size: int, store_path: str, out_dir: str) -> None:
    # A file store: a TCP store's server thread dies with rank 0 and can abort rank 1 on exit.
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size)
    try:
        modules = ddp_modules()
        results = {}
        for step in range(DDP_STEPS):
            torch.manual_seed(1000 + rank)  # revival must not depend on the ranks' random states
            for name, module in modules.items():
                out = module(ddp_rank_batch(step, rank))
                results[f"{name}/perplexity/{step}"] = out.perplexity
                if step == 0:
                    results[f"{name}/codebook/0"] = module.codebook.detach().clone()
        for name, module in modules.items():
            results.update({f"{name}/{key}": value for key, value in module.state_dict().items()})
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # no rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()
    # Skip the interpreter's C++ teardown: gloo's threads can still be joinable there and abort
    # ("terminate called without an active exception") after the test has passed.
    os._exit(0)


def test_distributed_ranks_keep_the_codebook_of_the_concatenated_batch(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), f"{key} differs between the ranks"

    single = ddp_modules()["ema"]
    for step in range(DDP_STEPS):
        out = single(torch.cat([ddp_rank_batch(step, rank) for rank in range(2)], dim=2))  # along H
        assert_close(ranks[0][f"ema/perplexity/{step}"], out.perplexity)
    assert (single.cluster_size > 0).all()  # every code took part
    for key, value in single.state_dict().items():
        assert_close(ranks[0][f"ema/{key}"], value, msg=key)

    # Code 4 was dead on both ranks at the first step and got a vector of rank 0's batch.
    rank0_vectors = ddp_rank_batch(0, 0).movedim(1, -1).reshape(-1, DDP_DIM)
    for name in ("revival", "trained-revival"):
        assert (rank0_vectors == ranks[0][f"{name}/codebook/0"][-1]).all(dim=1).any(), name


# --- arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"dim": 0}, "dim"), ({"dim": 2.5}, "dim"), ({"codebook_size": 0}, "codebook_size"),
    ({"codebook_size": True}, "codebook_size"), ({"commitment_weight": -1.0}, "commitment_weight"),
    ({"decay": 0.0}, "decay"), ({"decay": 1.0}, "decay"), ({"eps": 0.0}, "eps"),
    ({"threshold_dead": -0.1}, "threshold_dead"), ({"threshold_dead": 1.0}, "threshold_dead"),
    ({"metric": "dot"}, "metric"),
])
def test_bad_constructor_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VectorQuantizer(**{"dim": 4, "codebook_size": 8, **kwargs})


def test_bad_inputs_raise():
    vq, first = make_vq(), make_vq(channel_first=True)
    with pytest.raises(ValueError, match=r"\[\.\.\., D\] with D = dim = 6"):
        vq(torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"\[B, D, \*spatial\]"):
        first(torch.randn(4, 5, 6))
    with pytest.raises(ValueError, match=r"\[B, D, \*spatial\]"):
        first(torch.randn(6))
    with pytest.raises(TypeError, match="floating-point"):
        vq(torch.ones(4, 6, dtype=torch.int64))
    with pytest.raises(ValueError, match="at least one vector"):
        vq(torch.randn(0, 6))
    with pytest.raises(ValueError, match="NaN or Inf"):
        vq(torch.full((2, 6), float("nan")))
