"""NeRF (Mildenhall et al. 2020), the dense reference: positional encoding, the 8x256 MLP with a skip
connection and a view-dependent color head, stratified + hierarchical (coarse/fine) sampling along
each ray, nerf-pytorch-style alpha compositing, and a training loop on the procedural scene of
:mod:`fastgen.data.scenes`.

The dense renderer is a plain function, :func:`render_rays`; the accelerated pipeline,
:class:`AcceleratedRenderer`, renders the same :class:`NeRF` with nerfacc's approach: an occupancy grid
trained alongside the MLP skips empty space, samples behind opaque surfaces are dropped, and the fused
``fastgen::volume_render`` op composites. :func:`train_nerf` trains with either.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastgen.data.scenes import Scene, camera_rays, procedural_scene
from fastgen.nerf.occupancy import OccupancyGrid
from fastgen.nerf.rendering import rendering
from fastgen.ops.nerf.pdf import sample_pdf

DENSITY_ACTIVATIONS = ("relu", "softplus")


class PositionalEncoding(nn.Module):
    """x [..., d] -> [..., d * (1 + 2 * num_freqs)]: [x, sin(2^0 x), cos(2^0 x), ..., sin(2^(L-1) x),
    cos(2^(L-1) x)] (nerf-pytorch's order and frequencies: no factor of pi)."""

    def __init__(self, num_freqs: int) -> None:
        super().__init__()
        if isinstance(num_freqs, bool) or not isinstance(num_freqs, int) or num_freqs < 0:
            raise ValueError(f"num_freqs must be an int >= 0, got {num_freqs!r}")
        self.num_freqs = num_freqs
        self.register_buffer("freqs", 2.0 ** torch.arange(num_freqs, dtype=torch.float32), persistent=False)

    def out_dim(self, in_dim: int) -> int:
        return in_dim * (1 + 2 * self.num_freqs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scaled = x[..., None, :] * self.freqs.to(x.dtype)[:, None]  # [..., L, d]
        waves = torch.stack([scaled.sin(), scaled.cos()], dim=-2).flatten(-3)  # [..., L * 2 * d]
        return torch.cat([x, waves], dim=-1)


class NeRF(nn.Module):
    """(points [..., 3], unit view directions [..., 3]) -> (rgb [..., 3] in (0, 1), density [...] >= 0).

    ``depth`` ReLU layers of ``width`` on the encoded point; after layer ``i`` for ``i`` in ``skips``
    (0-based; the paper's (4,) is "the fifth layer") the encoded point is concatenated again to the
    activation. A linear head gives the density, made non-negative by ``density_activation``:
    "relu" (the paper's) or "softplus" (smooth, so an untrained density cannot die at zero). A
    linear ``width``-d feature, concatenated with the encoded direction, feeds one ReLU layer of
    ``color_width`` and a sigmoid RGB head.
    """

    def __init__(self, depth: int = 8, width: int = 256, skips: tuple[int, ...] = (4,), pos_freqs: int = 10,
                 dir_freqs: int = 4, color_width: int = 128, density_activation: str = "relu") -> None:
        super().__init__()
        for name, value in (("depth", depth), ("width", width), ("color_width", color_width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        skips = tuple(skips)
        if any(not 0 <= s < depth - 1 for s in skips):
            raise ValueError(f"skips must be layer indices in [0, depth - 1) = [0, {depth - 1}), got {skips}")
        if density_activation not in DENSITY_ACTIVATIONS:
            raise ValueError(f"density_activation must be one of {DENSITY_ACTIVATIONS}, got {density_activation!r}")
        self.skips = skips
        self.density_activation = density_activation
        self.pos_encoding = PositionalEncoding(pos_freqs)
        self.dir_encoding = PositionalEncoding(dir_freqs)
        pos_dim, dir_dim = self.pos_encoding.out_dim(3), self.dir_encoding.out_dim(3)
        self.layers = nn.ModuleList(
            [nn.Linear(pos_dim, width)]
            + [nn.Linear(width + (pos_dim if i - 1 in skips else 0), width) for i in range(1, depth)])
        self.density_head = nn.Linear(width, 1)
        self.feature = nn.Linear(width, width)
        self.color_layer = nn.Linear(width + dir_dim, color_width)
        self.color_head = nn.Linear(color_width, 3)

    def _trunk(self, points: torch.Tensor) -> torch.Tensor:
        encoded = self.pos_encoding(points)
        h = encoded
        for i, layer in enumerate(self.layers):
            h = F.relu(layer(h))
            if i in self.skips:
                h = torch.cat([encoded, h], dim=-1)
        return h

    def _density(self, h: torch.Tensor) -> torch.Tensor:
        raw = self.density_head(h).squeeze(-1)
        return F.relu(raw) if self.density_activation == "relu" else F.softplus(raw)

    def density(self, points: torch.Tensor) -> torch.Tensor:
        """Density [...] at points [..., 3] alone (what an occupancy grid queries)."""
        return self._density(self._trunk(points))

    def forward(self, points: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self._trunk(points)
        h_color = F.relu(self.color_layer(torch.cat([self.feature(h), self.dir_encoding(dirs)], dim=-1)))
        return torch.sigmoid(self.color_head(h_color)), self._density(h)


@dataclass(frozen=True)
class NeRFConfig:
    """The MLP (see :class:`NeRF`) and the dense renderer. ``n_coarse`` stratified samples per ray in
    [near, far]; ``n_fine`` more drawn from the coarse weights (0: coarse only); ``chunk`` rays
    per forward pass when rendering whole images, which bounds memory. The defaults are the paper's
    and the procedural scene's bounds."""

    depth: int = 8
    width: int = 256
    skips: tuple[int, ...] = (4,)
    pos_freqs: int = 10
    dir_freqs: int = 4
    color_width: int = 128
    density_activation: str = "relu"
    n_coarse: int = 64
    n_fine: int = 128
    near: float = 2.0
    far: float = 6.0
    chunk: int = 4096

    def make_model(self) -> NeRF:
        return NeRF(self.depth, self.width, self.skips, self.pos_freqs, self.dir_freqs, self.color_width,
                    self.density_activation)


@dataclass
class RenderOutput:
    """Per ray: rgb [N, 3], depth [N] (expected distance along the ray direction, in units of
    its length), acc [N] (opacity); per sample: weights and distances t [N, S]."""

    rgb: torch.Tensor
    depth: torch.Tensor
    acc: torch.Tensor
    weights: torch.Tensor
    t: torch.Tensor


@dataclass
class NeRFOutput:
    """The coarse pass, and the fine one when ``n_fine`` > 0; ``final`` is the best available."""

    coarse: RenderOutput
    fine: RenderOutput | None = None

    @property
    def final(self) -> RenderOutput:
        return self.fine if self.fine is not None else self.coarse

    def outputs(self) -> list[RenderOutput]:
        return [self.coarse] + ([self.fine] if self.fine is not None else [])


def stratified_samples(n_rays: int, near: float, far: float, n_samples: int, perturb: bool,
                       generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sorted distances t [n_rays, n_samples] in [near, far]: evenly spaced, or with ``perturb``
    one uniform sample in each of the intervals between the midpoints of the even ones."""
    t = torch.linspace(near, far, n_samples, device=device, dtype=dtype).expand(n_rays, n_samples)
    if not perturb:
        return t.contiguous()
    mids = 0.5 * (t[:, 1:] + t[:, :-1])
    lower, upper = torch.cat([t[:, :1], mids], -1), torch.cat([mids, t[:, -1:]], -1)
    u = torch.rand(t.shape, generator=generator, device=device, dtype=dtype)
    return lower + (upper - lower) * u


def composite(sigmas: torch.Tensor, rgbs: torch.Tensor, t: torch.Tensor, rays_d: torch.Tensor,
              background: torch.Tensor | float | None = 1.0) -> RenderOutput:
    """nerf-pytorch's volume rendering of samples at sorted distances t [N, S] along rays_d [N, 3]:
    delta_i = (t_{i+1} - t_i) |d| with the last delta 1e10 (the ray ends opaque), alpha_i =
    1 - exp(-sigma_i delta_i), transmittance T_i = prod_{j<i} (1 - alpha_j + 1e-10), weights
    w_i = alpha_i T_i; rgb = sum w_i c_i + (1 - acc) * background (None: black)."""
    deltas = torch.cat([t[:, 1:] - t[:, :-1], torch.full_like(t[:, :1], 1e10)], -1)
    deltas = deltas * rays_d.norm(dim=-1, keepdim=True)
    alpha = 1 - torch.exp(-sigmas * deltas)
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1] + 1e-10], -1), -1)
    weights = alpha * transmittance
    rgb = (weights[..., None] * rgbs).sum(-2)
    acc = weights.sum(-1)
    if background is not None:
        rgb = rgb + (1 - acc[:, None]) * torch.as_tensor(background, dtype=rgb.dtype, device=rgb.device)
    return RenderOutput(rgb=rgb, depth=(weights * t).sum(-1), acc=acc, weights=weights, t=t)


def fine_samples(coarse: RenderOutput, n_fine: int, perturb: bool,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """The coarse distances merged with ``n_fine`` drawn from the coarse weights (hierarchical
    sampling, as nerf-pytorch: bins between the coarse midpoints, the interior weights), sorted
    [N, n_coarse + n_fine]; no gradient flows into the sample positions."""
    t = coarse.t.detach()
    mids = 0.5 * (t[:, 1:] + t[:, :-1])
    extra = sample_pdf(mids, coarse.weights.detach()[:, 1:-1], n_fine, deterministic=not perturb,
                       generator=generator)
    return torch.sort(torch.cat([t, extra], -1), -1).values


def _shade(model: NeRF, rays_o: torch.Tensor, rays_d: torch.Tensor, t: torch.Tensor,
           background: torch.Tensor | float | None) -> RenderOutput:
    points = rays_o[:, None] + t[..., None] * rays_d[:, None]
    dirs = (rays_d / rays_d.norm(dim=-1, keepdim=True))[:, None].expand_as(points)
    rgbs, sigmas = model(points, dirs)
    return composite(sigmas, rgbs, t, rays_d, background)


def render_rays(model: NeRF, rays_o: torch.Tensor, rays_d: torch.Tensor, config: NeRFConfig,
                fine_model: NeRF | None = None, perturb: bool = False, generator: torch.Generator | None = None,
                background: torch.Tensor | float | None = 1.0) -> NeRFOutput:
    """The dense renderer: rays [N, 3] (directions of any length) -> :class:`NeRFOutput`.
    ``n_coarse`` stratified samples through ``model``, then (if ``n_fine`` > 0) all samples through
    ``fine_model`` (default: ``model``). ``perturb`` jitters the samples (training)."""
    if rays_o.dim() != 2 or rays_o.shape[-1] != 3 or rays_d.shape != rays_o.shape:
        raise ValueError(f"rays_o and rays_d must both have shape [N, 3], got {tuple(rays_o.shape)} "
                         f"and {tuple(rays_d.shape)}")
    t = stratified_samples(len(rays_o), config.near, config.far, config.n_coarse, perturb, generator,
                           rays_o.device, rays_o.dtype)
    coarse = _shade(model, rays_o, rays_d, t, background)
    if config.n_fine == 0:
        return NeRFOutput(coarse)
    t = fine_samples(coarse, config.n_fine, perturb, generator)
    return NeRFOutput(coarse, _shade(fine_model or model, rays_o, rays_d, t, background))


RenderFn = Callable[..., NeRFOutput]


@dataclass(frozen=True)
class AcceleratedConfig:
    """The accelerated pipeline's occupancy grid and marcher (nerfacc's names). ``resolution`` cells
    per axis over the scene's aabb; samples every ``render_step_size`` world units through occupied
    cells; a sample is dropped when its alpha is below ``alpha_thre`` or the transmittance before it
    is below ``early_stop_eps``. The grid is re-evaluated every ``update_every`` steps (every cell
    during the first ``warmup_steps``), a cell being occupied when density * step size exceeds
    ``occ_thre``."""

    # Tuned on the procedural scene (an aabb of 2.5 x 2.5 x 1.2, runs of hundreds of steps): a 32^3
    # grid costs a few ms per update where 64^3 costs as much as the step; nerfacc's 256 warm-up steps
    # (every cell evaluated) would be most of a short run; and with its ema_decay of 0.95 a cell
    # that empties stays marked for ~240 steps (0.95^15 halves it), so nothing was pruned in 300.
    resolution: int = 32
    render_step_size: float = 0.03
    early_stop_eps: float = 1e-4
    alpha_thre: float = 1e-3
    occ_thre: float = 1e-2
    update_every: int = 16
    warmup_steps: int = 32
    ema_decay: float = 0.8


class AcceleratedRenderer:
    """Occupancy-grid marching + fused rendering, called like :func:`render_rays`: returns a
    :class:`NeRFOutput` with only the coarse pass (one network, as nerfacc's NeRF examples), whose
    ``weights`` and ``t`` are left empty since samples are packed per ray. :meth:`update` trains the
    grid from the model's density; call it once per training step.

    Train the MLP with ``density_activation="softplus"``: under ReLU an untrained MLP has zero density
    in much of the volume, the grid marks those cells empty, and no sample (so no gradient) ever
    reaches them again."""

    def __init__(self, aabb: torch.Tensor, config: AcceleratedConfig = AcceleratedConfig()) -> None:
        self.config = config
        self.grid = OccupancyGrid(aabb, resolution=config.resolution)

    def to(self, device: torch.device | str) -> AcceleratedRenderer:
        self.grid.to(device)
        return self

    def update(self, step: int, model: NeRF, generator: torch.Generator | None = None) -> None:
        c = self.config
        self.grid.train()
        self.grid.update_every_n_steps(step, lambda x: model.density(x) * c.render_step_size, occ_thre=c.occ_thre,
                                       ema_decay=c.ema_decay, warmup_steps=c.warmup_steps, n=c.update_every,
                                       generator=generator)

    def __call__(self, model: NeRF, rays_o: torch.Tensor, rays_d: torch.Tensor, config: NeRFConfig,
                 fine_model: NeRF | None = None, perturb: bool = False, generator: torch.Generator | None = None,
                 background: torch.Tensor | float | None = 1.0) -> NeRFOutput:
        c = self.config
        # Unit directions: the marcher's t and step are then in world units, as the dense renderer's.
        dirs = rays_d / rays_d.norm(dim=-1, keepdim=True)

        def points(t_starts, t_ends, ray_indices):
            return rays_o[ray_indices] + ((t_starts + t_ends) / 2)[:, None] * dirs[ray_indices]

        def sigma_fn(t_starts, t_ends, ray_indices):
            return model.density(points(t_starts, t_ends, ray_indices))

        def rgb_sigma_fn(t_starts, t_ends, ray_indices):
            return model(points(t_starts, t_ends, ray_indices), dirs[ray_indices])

        ray_indices, t_starts, t_ends = self.grid.sampling(
            rays_o, dirs, sigma_fn=sigma_fn, near_plane=config.near, far_plane=config.far,
            render_step_size=c.render_step_size, early_stop_eps=c.early_stop_eps, alpha_thre=c.alpha_thre,
            stratified=perturb, generator=generator)
        if background is not None:
            background = torch.as_tensor(background, dtype=rays_o.dtype, device=rays_o.device)
        rgb, acc, depth, _ = rendering(t_starts, t_ends, ray_indices, n_rays=len(rays_o), rgb_sigma_fn=rgb_sigma_fn,
                                       render_bkgd=background, early_stop_eps=c.early_stop_eps, return_extras=False)
        empty = rays_o.new_empty(0)
        return NeRFOutput(RenderOutput(rgb=rgb, depth=depth[:, 0], acc=acc[:, 0], weights=empty, t=empty))


@torch.no_grad()
def render_image(model: NeRF, pose: torch.Tensor, height: int, width: int, focal: float, config: NeRFConfig,
                 fine_model: NeRF | None = None, background: torch.Tensor | float | None = 1.0,
                 render_fn: RenderFn = render_rays) -> RenderOutput:
    """One view from a camera-to-world pose [4, 4], ``config.chunk`` rays at a time, without
    perturbation: the final pass's rgb [H, W, 3], depth and acc [H, W] (weights and t left empty)."""
    rays_o, rays_d = (r.reshape(-1, 3) for r in camera_rays(pose[None], height, width, focal))
    parts = [render_fn(model, rays_o[i:i + config.chunk], rays_d[i:i + config.chunk], config,
                       fine_model=fine_model, background=background).final
             for i in range(0, len(rays_o), config.chunk)]
    empty = rays_o.new_empty(0)
    return RenderOutput(rgb=torch.cat([p.rgb for p in parts]).view(height, width, 3),
                        depth=torch.cat([p.depth for p in parts]).view(height, width),
                        acc=torch.cat([p.acc for p in parts]).view(height, width), weights=empty, t=empty)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of images in [0, 1]: -10 log10(MSE)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    return -10 * torch.log10(F.mse_loss(pred, target))


@dataclass
class TrainResult:
    """Per-step losses (MSE of the coarse plus the fine pass), the mean held-out PSNR over the test
    views and each view's, the training time in seconds (held-out checks excluded), the trained
    models, and the accelerated pipeline's renderer (its occupancy grid) when it trained."""

    losses: list[float]
    test_psnr: float
    psnr_per_view: list[float]
    seconds: float
    model: NeRF
    fine_model: NeRF | None
    config: NeRFConfig = field(repr=False)
    renderer: AcceleratedRenderer | None = field(default=None, repr=False)
    # With target_psnr: the first held-out check at or above it (training seconds exclude the checks).
    steps_to_target: int | None = None
    seconds_to_target: float | None = None


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def evaluate(model: NeRF, scene: Scene, config: NeRFConfig, fine_model: NeRF | None = None,
             render_fn: RenderFn = render_rays) -> tuple[list[float], torch.Tensor]:
    """PSNR of every held-out view, and the rendered views [V, H, W, 3]."""
    model.eval()
    if fine_model is not None:
        fine_model.eval()
    renders = torch.stack([render_image(model, pose, scene.height, scene.width, scene.focal, config, fine_model,
                                        scene.background, render_fn).rgb for pose in scene.test_poses])
    return [psnr(r, t).item() for r, t in zip(renders, scene.test_images)], renders


def train_nerf(steps: int, batch_rays: int = 1024, lr: float = 5e-4, seed: int = 0, config: NeRFConfig | None = None,
               scene: Scene | None = None, log_every: int = 0, out_dir: str | Path | None = None,
               lr_final_ratio: float = 0.1, fine_network: bool = True, render_fn: RenderFn = render_rays,
               device: torch.device | str = "cpu", accelerated: AcceleratedConfig | None = None,
               target_psnr: float | None = None, eval_every: int = 100) -> TrainResult:
    """Train on ``scene`` (default: :func:`procedural_scene`) for ``steps`` Adam steps of
    ``batch_rays`` rays drawn uniformly from all training pixels, on the MSE of the coarse plus the
    fine pass; the learning rate decays exponentially to ``lr * lr_final_ratio`` at the last step.
    With ``fine_network`` (the paper's setup) the fine pass has its own MLP, else it reuses the
    coarse one. ``render_fn`` replaces :func:`render_rays` (same arguments, a :class:`NeRFOutput`).
    ``accelerated`` trains the accelerated pipeline instead (:class:`AcceleratedRenderer` over the
    scene's aabb, one MLP; ``render_fn`` and ``fine_network`` are then unused).
    With ``target_psnr``, the held-out PSNR is checked every ``eval_every`` steps (and after the last)
    and training stops at the first check that reaches it; the checks are not timed.
    Prints the loss every ``log_every`` steps (0: never). With ``out_dir``, writes ``heldout.png``
    (first held-out view: render | ground truth) and ``metrics.json``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if isinstance(batch_rays, bool) or not isinstance(batch_rays, int) or batch_rays < 1:
        raise ValueError(f"batch_rays must be an int >= 1, got {batch_rays!r}")
    if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 1:
        raise ValueError(f"eval_every must be an int >= 1, got {eval_every!r}")
    config = config or NeRFConfig()
    scene = (scene or procedural_scene()).to(device)
    torch.manual_seed(seed)
    model = config.make_model().to(device)
    renderer = None
    if accelerated is not None:
        renderer = AcceleratedRenderer(scene.aabb, accelerated).to(device)
        render_fn, fine_network = renderer, False
    fine_model = config.make_model().to(device) if fine_network and config.n_fine > 0 else None
    params = list(model.parameters()) + (list(fine_model.parameters()) if fine_model is not None else [])
    optimizer = torch.optim.Adam(params, lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_final_ratio ** (s / max(steps, 1)))
    generator = torch.Generator(device).manual_seed(seed)

    rays_o, rays_d = (r.reshape(-1, 3) for r in camera_rays(scene.poses, scene.height, scene.width, scene.focal))
    colors = scene.images.reshape(-1, 3)
    losses = []
    steps_to_target = seconds_to_target = None
    psnr_per_view = renders = None
    seconds = 0.0
    for step in range(steps):
        model.train()
        start = time.perf_counter()
        if renderer is not None:
            renderer.update(step, model, generator)
        index = torch.randint(len(colors), (batch_rays,), generator=generator, device=device)
        out = render_fn(model, rays_o[index], rays_d[index], config, fine_model=fine_model, perturb=True,
                        generator=generator, background=scene.background)
        loss = sum(F.mse_loss(o.rgb, colors[index]) for o in out.outputs())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.detach())  # no .item() per step: it would wait for a GPU
        seconds += time.perf_counter() - start
        if log_every and (step + 1) % log_every == 0:
            batch_psnr = psnr(out.final.rgb.detach(), colors[index]).item()
            print(f"step {step + 1}/{steps}  loss {losses[-1].item():.5f}  batch psnr {batch_psnr:.2f} dB  "
                  f"{seconds:.1f} s", flush=True)
        if target_psnr is not None and ((step + 1) % eval_every == 0 or step + 1 == steps):
            psnr_per_view, renders = evaluate(model, scene, config, fine_model, render_fn)
            if sum(psnr_per_view) / len(psnr_per_view) >= target_psnr:
                steps_to_target, seconds_to_target = step + 1, seconds
                break
    losses = torch.stack(losses).tolist() if losses else []

    if psnr_per_view is None:
        psnr_per_view, renders = evaluate(model, scene, config, fine_model, render_fn)
    result = TrainResult(losses=losses, test_psnr=sum(psnr_per_view) / len(psnr_per_view),
                         psnr_per_view=psnr_per_view, seconds=seconds, model=model, fine_model=fine_model,
                         config=config, renderer=renderer, steps_to_target=steps_to_target,
                         seconds_to_target=seconds_to_target)
    if out_dir is not None:
        from PIL import Image

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        side_by_side = torch.cat([renders[0], scene.test_images[0]], dim=1).cpu()
        Image.fromarray(_to_uint8(side_by_side)).save(out / "heldout.png")
        metrics = {"test_psnr": result.test_psnr, "psnr_per_view": psnr_per_view, "steps": len(losses),
                   "final_loss": losses[-1] if losses else None, "train_seconds": seconds,
                   "pipeline": "dense" if accelerated is None else "accelerated",
                   "target_psnr": target_psnr, "steps_to_target": steps_to_target,
                   "seconds_to_target": seconds_to_target, "batch_rays": batch_rays, "lr": lr, "seed": seed,
                   "config": asdict(config),
                   "accelerated_config": None if accelerated is None else asdict(accelerated)}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fastgen train nerf``."""
    default = NeRFConfig()
    parser.add_argument("--steps", type=int, default=1000, help="Adam steps (default 1000)")
    parser.add_argument("--batch-rays", type=int, default=1024, help="rays per step (default 1024)")
    parser.add_argument("--lr", type=float, default=5e-4, help="initial learning rate (default 5e-4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--width", type=int, default=default.width, help="MLP width (default 256)")
    parser.add_argument("--depth", type=int, default=default.depth,
                        help="MLP layers (default 8); the skip connection follows layer depth // 2, 0-based")
    parser.add_argument("--coarse", type=int, default=default.n_coarse, help="coarse samples per ray (default 64)")
    parser.add_argument("--fine", type=int, default=default.n_fine, help="fine samples per ray (default 128; 0: none)")
    parser.add_argument("--density", choices=DENSITY_ACTIVATIONS, default=None,
                        help="density activation (default: relu, the paper's; softplus with --accelerated)")
    parser.add_argument("--accelerated", action="store_true",
                        help="train the accelerated pipeline (occupancy grid + fused rendering, one MLP; "
                             "--coarse/--fine unused)")
    parser.add_argument("--target-psnr", type=float, default=None,
                        help="stop at the first held-out check (every --eval-every steps) reaching this PSNR")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between held-out checks (default 100)")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--device", default="cpu", help="torch device to train on (default cpu)")
    parser.add_argument("--out-dir", default=None, help="where to write heldout.png and metrics.json")


def run(args: argparse.Namespace) -> int:
    """``fastgen train nerf`` with parsed :func:`add_arguments` options."""
    default = NeRFConfig()
    skips = (args.depth // 2,) if args.depth // 2 < args.depth - 1 else ()  # (4,) at the paper's depth 8
    density = args.density or ("softplus" if args.accelerated else "relu")
    config = replace(default, width=args.width, depth=args.depth, skips=skips, n_coarse=args.coarse, n_fine=args.fine,
                     density_activation=density)
    result = train_nerf(args.steps, batch_rays=args.batch_rays, lr=args.lr, seed=args.seed, config=config,
                        scene=procedural_scene(size=args.size), log_every=args.log_every, out_dir=args.out_dir,
                        device=args.device, accelerated=AcceleratedConfig() if args.accelerated else None,
                        target_psnr=args.target_psnr, eval_every=args.eval_every)
    print(f"held-out PSNR {result.test_psnr:.2f} dB after {len(result.losses)} steps ({result.seconds:.1f} s)")
    if args.target_psnr is not None:
        print(f"{args.target_psnr} dB " + (f"reached after {result.steps_to_target} steps ({result.seconds_to_target:.1f} s)"
                                          if result.steps_to_target is not None else "not reached"))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastgen train nerf", description="Train NeRF on the procedural scene.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
