"""NeRF volume rendering: fastgen's fused kernel against nerf-pytorch-style eager compositing.

Run (the JSON is read by ``benchmarks/report.py``):

    PYTHONPATH=. python -m pytest benchmarks/bench_nerf.py -q --benchmark-json=OUT.json

or, for one size with the providers interleaved round by round (medians; fairer on a busy machine):

    PYTHONPATH=. python benchmarks/bench_nerf.py 65536 192 [rounds]

float32 on CPU, batched layout [R, S] (R rays, S samples each, rgbs [R, S, 3]), R in {4096, 65536},
S in {64, 192}; pass "fwd" (colors, opacities, depths) or "fwd+bwd" (and the gradients of
colors.sum() + opacities.sum() + depths.sum() w.r.t. sigmas and rgbs).

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
"""
from __future__ import annotations

import os

import pytest
import torch

from fastgen.nerf.rendering import rendering
from fastgen.testing import benchmark_after_warm_up

SUITE = "nerf"
DTYPE = torch.float32
NEAR, FAR = 2.0, 6.0
SIZES = [(r, s) for r in (4096, 65536) for s in (64, 192)]
PROVIDERS = ["fastgen", "fastgen_eps0", "eager", "compile"]
PASSES = ["fwd", "fwd+bwd"]


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
