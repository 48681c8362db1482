"""Vector quantization for VQ-VAEs (van den Oord et al. 2017), optionally with the EMA codebook
of Razavi et al. 2019 ("VQ-VAE-2"), dead-code revival, and codebooks kept in sync under DDP."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fastgen.ops import _checks as checks
from fastgen.ops.vq import METRICS, vq_cluster_stats, vq_nearest

# How fast the usage estimate behind dead-code revival forgets, when there is no EMA ``decay``
# to share: about the last 100 steps count.
DEFAULT_USAGE_DECAY = 0.99


class VQOutput(NamedTuple):
    """What :class:`VectorQuantizer` returns."""

    quantized: torch.Tensor  # the input's shape; its gradient passes to the input unchanged (l2)
    indices: torch.Tensor  # int64 code per vector: the input's shape without the channel dimension
    loss: torch.Tensor  # scalar: codebook + commitment loss (commitment only with an EMA codebook)
    perplexity: torch.Tensor  # exp(entropy of the batch's code frequencies), in [1, codebook_size]
    usage: torch.Tensor  # fraction of the codes that the batch used, in (0, 1]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class VectorQuantizer(nn.Module):
    """Replaces each D-vector of the input by its nearest codebook entry, with a straight-through gradient.

    Args:
        dim: D, the size of each vector (the channels of a feature map).
        codebook_size: K, the number of codes.
        commitment_weight: beta, the weight of the commitment loss |z - sg(e)|^2.
        decay: None trains the codebook (an ``nn.Parameter``) by gradient through the codebook loss
            |sg(z) - e|^2. A float in (0, 1) makes it a buffer that, in training mode, follows the
            exponential moving averages of each code's cluster size and the sum of its vectors, with
            Laplace smoothing by ``eps``; the loss is then the commitment term only.
        eps: Laplace smoothing of the EMA cluster sizes.
        threshold_dead: a code is dead when its share of the assignments, averaged over recent training
            steps (an EMA with ``decay``, else with 0.99, bias-corrected as Adam's), falls below
            ``threshold_dead`` times the uniform share 1 / K. Dead codes are re-initialized from random
            vectors of the current batch, and get the uniform share back as a grace period. The default
            0.1 revives, at the first training step, every code the batch did not use (a data-dependent
            initialization), and later a code that had the uniform share and stopped being used after
            about 230 steps at a usage decay of 0.99 (log(0.1) / log(0.99)). 0 turns revival off.
            With a gradient-trained codebook, an optimizer's state for a revived row (Adam's moments)
            still describes the old code; the row's next updates use it as they are.
        metric: "l2", or "cosine": vectors and codes are L2-normalized, and the search, the quantized
            output (unit vectors), the losses and the EMA statistics all use the normalized vectors.
        channel_first: False for inputs [..., D]; True for [B, D, *spatial] such as an NCHW feature map.

    ``forward(z)`` returns a :class:`VQOutput`. In training mode it also updates the EMA codebook and
    the usage estimate and revives dead codes. When torch.distributed is initialized, training-mode
    forwards all-reduce the batch's cluster statistics (so every rank must call forward together),
    and dead codes are replaced with vectors from rank 0's batch, so all ranks keep identical
    codebooks; perplexity and usage then describe the batches of all ranks together.
    """

    def __init__(self, dim: int, codebook_size: int, commitment_weight: float = 0.25, decay: float | None = None,
                 eps: float = 1e-5, threshold_dead: float = 0.1, metric: str = "l2", *,
                 channel_first: bool = False) -> None:
        super().__init__()
        checks.positive_int("dim", dim)
        checks.positive_int("codebook_size", codebook_size)
        if not commitment_weight >= 0:
            raise ValueError(f"commitment_weight must be >= 0, got {commitment_weight!r}")
        if decay is not None and not 0 < decay < 1:
            raise ValueError(f"decay must be None or in (0, 1), got {decay!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        if not 0 <= threshold_dead < 1:
            raise ValueError(f"threshold_dead must be in [0, 1), got {threshold_dead!r}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.commitment_weight = commitment_weight
        self.decay = decay
        self.eps = eps
        self.threshold_dead = threshold_dead
        self.metric = metric
        self.channel_first = channel_first
        # Codes start near the origin: each then wins the vectors in its direction, where codes of
        # the data's scale would leave most of them farther than the smallest one from everything.
        codebook = torch.empty(codebook_size, dim).uniform_(-1 / codebook_size, 1 / codebook_size)
        if decay is None:
            self.codebook = nn.Parameter(codebook)
        else:
            self.register_buffer("codebook", codebook)
            self.register_buffer("cluster_size", torch.zeros(codebook_size))
            self.register_buffer("embed_sum", torch.zeros(codebook_size, dim))
        if threshold_dead > 0:
            self.usage_decay = decay if decay is not None else DEFAULT_USAGE_DECAY
            self.register_buffer("code_usage", torch.zeros(codebook_size))
            self.register_buffer("usage_steps", torch.zeros((), dtype=torch.int64))

    @property
    def channel_dim(self) -> int:
        return 1 if self.channel_first else -1

    def _check_input(self, z: object) -> None:
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            raise TypeError(f"z must be a floating-point torch.Tensor, got "
                            f"{getattr(z, 'dtype', type(z).__name__)}")
        layout = "[B, D, *spatial]" if self.channel_first else "[..., D]"
        if z.dim() < (2 if self.channel_first else 1) or z.shape[self.channel_dim] != self.dim:
            raise ValueError(f"z must have shape {layout} with D = dim = {self.dim}, got {tuple(z.shape)}")
        if z.numel() == 0:
            raise ValueError(f"z must hold at least one vector, got shape {tuple(z.shape)}")

    def forward(self, z: torch.Tensor) -> VQOutput:
        self._check_input(z)
        if self.metric == "cosine":
            z = F.normalize(z, dim=self.channel_dim)
        channel_last = z.movedim(self.channel_dim, -1)
        z_rows = channel_last.reshape(-1, self.dim)
        with torch.no_grad():
            indices, _ = vq_nearest(z_rows.detach(), self.codebook.detach().to(z.dtype), self.metric)
        # Gathered before the updates below change the codebook in place: the gather keeps no
        # reference to the codebook for its backward.
        code_rows = self.codebook[indices].to(z.dtype)
        if self.metric == "cosine":
            code_rows = F.normalize(code_rows, dim=1)
        codes = code_rows.view(channel_last.shape).movedim(-1, self.channel_dim)
        loss = self.commitment_weight * F.mse_loss(z, codes.detach())
        if self.decay is None:
            loss = loss + F.mse_loss(codes, z.detach())
        quantized = z + (codes - z).detach()
        with torch.no_grad():
            counts = self._update(z_rows.detach(), indices)
            probabilities = counts / counts.sum()
            perplexity = torch.special.entr(probabilities).sum().exp()
            usage = (counts > 0).float().mean()
        return VQOutput(quantized, indices.view(channel_last.shape[:-1]), loss, perplexity, usage)

    def _update(self, z_rows: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """The batch's code counts (all ranks' in distributed training), after the training-mode updates."""
        k = self.codebook_size
        if not self.training:
            return torch.bincount(indices, minlength=k).float()
        if self.decay is not None:
            counts, sums = vq_cluster_stats(z_rows, indices, k)
        else:
            counts, sums = torch.bincount(indices, minlength=k).float(), None
        if _distributed():
            # One collective for both: the sums ride along as extra columns of the counts.
            stats = counts.unsqueeze(1) if sums is None else torch.cat([counts.unsqueeze(1), sums], 1)
            dist.all_reduce(stats)
            counts, sums = stats[:, 0], (None if sums is None else stats[:, 1:])
        if sums is not None:
            self._ema_update(counts, sums)
        if self.threshold_dead > 0:
            self._revive_dead_codes(counts, z_rows)
        return counts

    def _ema_update(self, counts: torch.Tensor, sums: torch.Tensor) -> None:
        decay = self.decay
        self.cluster_size.mul_(decay).add_(counts.to(self.cluster_size.dtype), alpha=1 - decay)
        self.embed_sum.mul_(decay).add_(sums.to(self.embed_sum.dtype), alpha=1 - decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total
        # A code no vector has chosen yet has an empty sum: it keeps its vector rather than becoming 0.
        chosen = (self.cluster_size > 0).unsqueeze(1)
        self.codebook.copy_(torch.where(chosen, self.embed_sum / smoothed.unsqueeze(1), self.codebook))

    def _revive_dead_codes(self, counts: torch.Tensor, z_rows: torch.Tensor) -> None:
        self.usage_steps += 1
        self.code_usage.mul_(self.usage_decay).add_(counts / counts.sum(), alpha=1 - self.usage_decay)
        # The EMA starts at 0; dividing by the weight its terms have so far removes that bias.
        weight = 1 - self.usage_decay ** int(self.usage_steps)
        uniform_share = 1 / self.codebook_size
        dead = (self.code_usage / weight < self.threshold_dead * uniform_share).nonzero().squeeze(1)
        if dead.numel() == 0:
            return
        replacements = self._random_rows(z_rows, dead.numel()).to(self.codebook.dtype)
        self.codebook[dead] = replacements
        self.code_usage[dead] = weight * uniform_share
        if self.decay is not None:
            # Weighted as an average code, so its next assignments move it as much as they would one.
            mean_size = self.cluster_size.sum() / self.codebook_size
            self.cluster_size[dead] = mean_size
            self.embed_sum[dead] = replacements.to(self.embed_sum.dtype) * mean_size

    def _random_rows(self, z_rows: torch.Tensor, count: int) -> torch.Tensor:
        """``count`` random rows of z (distinct while there are enough), rank 0's on every rank."""
        if _distributed() and dist.get_rank() != 0:
            rows = z_rows.new_empty(count, self.dim)
        else:
            n = z_rows.shape[0]
            picks = (torch.randperm(n, device=z_rows.device)[:count] if count <= n
                     else torch.randint(n, (count,), device=z_rows.device))
            rows = z_rows[picks]
        if _distributed():
            dist.broadcast(rows, src=0)
        return rows

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, codebook_size={self.codebook_size}, commitment_weight={self.commitment_weight}, "
                f"decay={self.decay}, eps={self.eps}, threshold_dead={self.threshold_dead}, metric={self.metric!r}, "
                f"channel_first={self.channel_first}")

