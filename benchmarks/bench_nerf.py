"""NeRF: fused volume rendering, hierarchical sampling, and time to a held-out PSNR when training.

Run (the JSON is read by ``benchmarks/report.py``):

    PYTHONPATH=. python -m pytest benchmarks/bench_nerf.py -q --benchmark-json=OUT.json

or, for one rendering size with the providers interleaved round by round (medians; fairer on a busy
machine):

    PYTHONPATH=. python benchmarks/bench_nerf.py 65536 192 [rounds]

**Volume rendering** (``test_volume_render``): float32 on CPU, batched layout [R, S] (R rays, S samples
each, rgbs [R, S, 3]), R in {4096, 65536}, S in {64, 192}; pass "fwd" (colors, opacities, depths) or
"fwd+bwd" (and the gradients of colors.sum() + opacities.sum() + depths.sum() w.r.t. sigmas and rgbs).

Densities (``make_scene``, seeded): S contiguous intervals of a uniform grid over [2, 6] (nerf-synthetic's
near/far), shifted by a random fraction of a step per ray; 80% of the rays cross a surface at a depth d
uniform in [2.5, 5.5], a density bump 500 exp(-((t - d) / 0.05)^2) (integral ~44: T falls below 1e-4
inside it, as on a real opaque surface); every sample also has a density of 0.05 U(0, 1) (thin haze).
The other 20% see only the haze (background rays: never terminated). About 60% of the samples come
before the stop (``active_fraction`` in extra_info).
Providers:
    fastgen   ``fastgen.nerf.rendering(..., return_extras=False)`` with a ``rgb_sigma_fn`` returning the
              tensors: the fused kernel, early termination at eps = 1e-4 (nerfacc's default)
    fastgen_eps0  the same with early_stop_eps = 0: every sample composited, the speedup of fusion alone
    eager     nerf-pytorch's raw2outputs compositing in eager torch: alpha, an exclusive cumprod of
              1 - alpha + 1e-10, weights, weighted sums
    compile   ``torch.compile`` of the eager function (compiled before timing; ``compile_s`` in extra_info)

**Hierarchical sampling** (``test_sample_pdf``): NeRF's setup, R = 65536 rays, 64 coarse samples per ray
whose midpoints make the 63 edges of 62 intervals (nerf-pytorch passes ``weights[..., 1:-1]``), 128
fine samples per ray, deterministic (linspace u) and random u. fastgen is ``fastgen.nerf.sample_pdf``
(argument checks, u from torch.rand when random, the C++ kernel); eager is nerf-pytorch's
``sample_pdf`` as it writes it (``fastgen.ops.nerf.reference.sample_pdf_nerf_pytorch``); compile is
``torch.compile`` of it. Every provider draws its own random u, so that cost is in all of them.

**Time to a held-out PSNR** (``test_time_to_psnr``): train on the procedural scene (``TRAIN_*`` below)
until the mean PSNR of the held-out views reaches ``TARGET_PSNR``, checked every ``EVAL_EVERY`` steps;
the benchmark's time is the training time to that check (``timed_s``: the held-out renders are not
counted). Both pipelines train the same MLP with the same rays per step and learning rate:
    fastgen   the accelerated pipeline (``AcceleratedConfig``): occupancy grid marching, samples behind
              opaque surfaces dropped, the fused rendering op; one network
    dense     the reference: 64 stratified + 128 hierarchical samples per ray through a coarse and a fine
              network, eager compositing (nerf-pytorch's setup)
"""
from __future__ import annotations

import os

import pytest
import torch

from fastgen.data import procedural_scene
from fastgen.models.nerf import AcceleratedConfig, NeRFConfig, train_nerf
from fastgen.nerf import sample_pdf
from fastgen.nerf.rendering import rendering
from fastgen.ops.nerf.reference import sample_pdf_nerf_pytorch
from fastgen.testing import benchmark_after_warm_up

SUITE = "nerf"
DTYPE = torch.float32
NEAR, FAR = 2.0, 6.0
SIZES = [(r, s) for r in (4096, 65536) for s in (64, 192)]
PROVIDERS = ["fastgen", "fastgen_eps0", "eager", "compile"]
PASSES = ["fwd", "fwd+bwd"]

PDF_RAYS, PDF_COARSE, PDF_FINE = 65536, 64, 128
PDF_PROVIDERS = ["fastgen", "eager", "compile"]

# Training: a 4x64 MLP (the paper's 8x256 takes hours on 2 cores), 32x32 views, 256 rays per step.
TRAIN_MLP = dict(depth=4, width=64, skips=(1,), color_width=32, density_activation="softplus")
TRAIN_SIZE, TRAIN_RAYS, TRAIN_LR, TRAIN_MAX_STEPS = 32, 256, 5e-3, 2000
TARGET_PSNR, EVAL_EVERY, TEST_VIEWS = 18.5, 50, 4
PIPELINES = {"fastgen": AcceleratedConfig(), "dense": None}


def make_scene(n_rays: int, n_samples: int, seed: int = 0):
    """(t_starts, t_ends, sigmas, rgbs): [R, S] each, rgbs [R, S, 3]; see the module docstring."""
    gen = torch.Generator().manual_seed(seed)
    step = (FAR - NEAR) / n_samples
    # Contiguous intervals of a uniform grid, shifted by a random fraction of a step per ray.
    t_starts = NEAR + step * (torch.arange(n_samples) + torch.rand(n_rays, 1, generator=gen))
    t_ends = t_starts + step
    mids = (t_starts + t_ends) / 2
    depth = torch.empty(n_rays, 1).uniform_(2.5, 5.5, generator=gen)
    hits = torch.rand(n_rays, 1, generator=gen) < 0.8
    sigmas = 0.05 * torch.rand(n_rays, n_samples, generator=gen)
    sigmas = sigmas + torch.where(hits, 500 * torch.exp(-((mids - depth) / 0.05) ** 2), 0)
    rgbs = torch.rand(n_rays, n_samples, 3, generator=gen)
    return t_starts.to(DTYPE), t_ends.to(DTYPE), sigmas.to(DTYPE), rgbs.to(DTYPE)


def active_fraction(t_starts: torch.Tensor, t_ends: torch.Tensor, sigmas: torch.Tensor, eps: float = 1e-4) -> float:
    """The fraction of samples before their ray's stop at early_stop_eps = eps."""
    tau = sigmas.double() * (t_ends - t_starts).double()
    return float((torch.exp(-(tau.cumsum(-1) - tau)) >= eps).double().mean())


def eager_render(t_starts: torch.Tensor, t_ends: torch.Tensor, sigmas: torch.Tensor, rgbs: torch.Tensor):
    """nerf-pytorch's raw2outputs compositing (the network's activations already applied)."""
    alpha = 1 - torch.exp(-sigmas * (t_ends - t_starts))
    ones = torch.ones_like(alpha[..., :1])
    trans = torch.cumprod(torch.cat([ones, 1 - alpha + 1e-10], -1), -1)[..., :-1]
    weights = alpha * trans
    colors = (weights[..., None] * rgbs).sum(-2)
    depths = (weights * (t_starts + t_ends) / 2).sum(-1, keepdim=True)
    return colors, weights.sum(-1, keepdim=True), depths


def make_render(provider: str):
    """A function (t_starts, t_ends, sigmas, rgbs) -> (colors, opacities, depths)."""
    if provider in ("fastgen", "fastgen_eps0"):
        eps = 1e-4 if provider == "fastgen" else 0.0

        def fused(t_starts, t_ends, sigmas, rgbs):
            return rendering(t_starts, t_ends, rgb_sigma_fn=lambda *_: (rgbs, sigmas), early_stop_eps=eps,
                             return_extras=False)[:3]
        return fused
    if provider == "eager":
        return eager_render
    if provider == "compile":
        torch._dynamo.reset()  # a clean slate, so compile_s is a full compile
        return torch.compile(eager_render, fullgraph=True, dynamic=False)
    raise ValueError(provider)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"R{s[0]}-S{s[1]}")
def test_volume_render(benchmark, size, pass_, provider):
    n_rays, n_samples = size
    t_starts, t_ends, sigmas, rgbs = make_scene(n_rays, n_samples)
    render = make_render(provider)
    if pass_ == "fwd":
        def step():
            return render(t_starts, t_ends, sigmas, rgbs)
    else:
        sigmas.requires_grad_()
        rgbs.requires_grad_()

        def step():
            colors, opacities, depths = render(t_starts, t_ends, sigmas, rgbs)
            return torch.autograd.grad(colors.sum() + opacities.sum() + depths.sum(), (sigmas, rgbs))
    benchmark.group = f"volume_render {pass_} R={n_rays} S={n_samples}"
    benchmark.extra_info.update({
        "suite": SUITE, "op": "volume_render", "provider": provider, "shape": [n_rays, n_samples, 3],
        "pass": pass_, "dtype": str(DTYPE).removeprefix("torch."),
        "early_stop_eps": {"fastgen": 1e-4, "fastgen_eps0": 0.0}.get(provider),
        "active_fraction": active_fraction(t_starts, t_ends, sigmas.detach()),
        "allocator": os.environ.get("THP_MEM_ALLOC_ENABLE", "default")})
    benchmark_after_warm_up(benchmark, provider, step)


def make_coarse_pass(rays: int = PDF_RAYS, coarse: int = PDF_COARSE):
    """Edges (midpoints of stratified coarse samples) [R, coarse - 1] and their weights [R, coarse - 2]."""
    gen = torch.Generator().manual_seed(0)
    t = torch.linspace(0, 1, coarse, dtype=DTYPE)
    z_vals = NEAR + (FAR - NEAR) * (t + torch.rand(rays, coarse, generator=gen, dtype=DTYPE) / coarse)
    mids = 0.5 * (z_vals[:, 1:] + z_vals[:, :-1])
    weights = torch.rand(rays, coarse, generator=gen, dtype=DTYPE) ** 4  # peaky, as trained densities
    return mids, weights[:, 1:-1].contiguous()


def make_sampler(provider: str, bins: torch.Tensor, weights: torch.Tensor, deterministic: bool):
    if provider == "fastgen":
        return lambda: sample_pdf(bins, weights, PDF_FINE, deterministic)
    if provider == "eager":
        return lambda: sample_pdf_nerf_pytorch(bins, weights, PDF_FINE, deterministic)
    if provider == "compile":
        torch._dynamo.reset()  # a clean slate, so compile_s is a full compile
        compiled = torch.compile(sample_pdf_nerf_pytorch, fullgraph=True, dynamic=False)
        return lambda: compiled(bins, weights, PDF_FINE, deterministic)
    raise ValueError(provider)


@pytest.mark.parametrize("provider", PDF_PROVIDERS)
@pytest.mark.parametrize("deterministic", [True, False], ids=["det", "rand"])
def test_sample_pdf(benchmark, deterministic, provider):
    bins, weights = make_coarse_pass()
    benchmark.group = f"sample_pdf R={PDF_RAYS} S={weights.shape[1]} n={PDF_FINE} {'det' if deterministic else 'rand'}"
    benchmark.extra_info.update({
        "suite": SUITE, "op": "sample_pdf", "provider": provider, "shape": [PDF_RAYS, weights.shape[1], PDF_FINE],
        "deterministic": deterministic, "dtype": str(DTYPE).removeprefix("torch.")})
    benchmark_after_warm_up(benchmark, provider, make_sampler(provider, bins, weights, deterministic))


@pytest.mark.parametrize("provider", list(PIPELINES))
def test_time_to_psnr(benchmark, provider):
    scene = procedural_scene(size=TRAIN_SIZE, n_test=TEST_VIEWS)
    results = []

    def train():
        results.append(train_nerf(TRAIN_MAX_STEPS, batch_rays=TRAIN_RAYS, lr=TRAIN_LR, config=NeRFConfig(**TRAIN_MLP),
                                  scene=scene, accelerated=PIPELINES[provider], target_psnr=TARGET_PSNR,
                                  eval_every=EVAL_EVERY))

    benchmark.group = f"nerf training to {TARGET_PSNR} dB held-out PSNR, {TRAIN_SIZE}x{TRAIN_SIZE} views"
    # One run: a minute for the dense pipeline. report.py reads timed_s (training only), not the wall time.
    benchmark.pedantic(train, rounds=1, iterations=1)
    result = results[0]
    benchmark.extra_info.update({
        "suite": SUITE, "op": "nerf_train_to_psnr", "provider": provider, "target_psnr": TARGET_PSNR,
        "timed_s": result.seconds_to_target, "steps_to_target": result.steps_to_target,
        "final_psnr": result.test_psnr, "batch_rays": TRAIN_RAYS, "mlp": TRAIN_MLP,
        "allocator": os.environ.get("THP_MEM_ALLOC_ENABLE", "default")})
    assert result.seconds_to_target is not None, (
        f"{provider} did not reach {TARGET_PSNR} dB in {TRAIN_MAX_STEPS} steps (held-out {result.test_psnr:.2f} dB)")


def _interleaved(n_rays: int, n_samples: int, rounds: int) -> None:
    import statistics
    import time

    scene = make_scene(n_rays, n_samples)
    renders = {provider: make_render(provider) for provider in PROVIDERS}
    for pass_ in PASSES:
        steps = {}
        for provider, render in renders.items():
            t_starts, t_ends, sigmas, rgbs = (t.detach().clone() for t in scene)
            if pass_ == "fwd+bwd":
                sigmas.requires_grad_()
                rgbs.requires_grad_()
            steps[provider] = (render, t_starts, t_ends, sigmas, rgbs, pass_ == "fwd+bwd")

        def run(render, t_starts, t_ends, sigmas, rgbs, backward):
            outputs = render(t_starts, t_ends, sigmas, rgbs)
            if backward:
                torch.autograd.grad(sum(o.sum() for o in outputs), (sigmas, rgbs))

        for step in steps.values():
            run(*step)  # compiles, faults pages in
        times = {provider: [] for provider in steps}
        for _ in range(rounds):
            for provider, step in steps.items():
                start = time.perf_counter()
                run(*step)
                times[provider].append(time.perf_counter() - start)
        medians = {provider: statistics.median(t) * 1e3 for provider, t in times.items()}
        print(f"{pass_} R={n_rays} S={n_samples}: " + ", ".join(f"{p} {m:.1f} ms" for p, m in medians.items()))
        for provider in ("fastgen", "fastgen_eps0"):
            print(f"  {provider}: {medians['eager'] / medians[provider]:.1f}x eager, "
                  f"{medians['compile'] / medians[provider]:.1f}x compile")


if __name__ == "__main__":
    import sys

    _interleaved(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 7)
