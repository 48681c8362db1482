"""Spectral normalization: a drop-in for ``torch.nn.utils.parametrizations.spectral_norm``."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from fastgen import _backends
from fastgen.ops import _checks as checks
from fastgen.ops._library import FLOAT_DTYPES, plain_eager
from fastgen.ops.spectral_norm import spectral_norm_step
from fastgen.ops.spectral_norm.reference import power_iteration_ref

# torch's warm start: power iterations run on u, v when the parametrization is built.
_INITIAL_POWER_ITERATIONS = 15


_SMALLEST_NORMAL = {dtype: torch.finfo(dtype).tiny for dtype in FLOAT_DTYPES}


def _sigma_floor(eps: float, dtype: torch.dtype) -> float:
    """sigma's lower clamp. An all-zero weight has sigma = 0: the clamp maps it to 0 rather than NaN.
    The floor is at least the dtype's smallest normal number, since float16 rounds eps = 1e-12 to zero."""
    return max(eps, _SMALLEST_NORMAL[dtype])


class _SpectralNorm(nn.Module):
    """The parametrization W -> W / sigma(W); its buffers ``_u``, ``_v`` are named as torch's."""

    def __init__(self, weight: torch.Tensor, n_power_iterations: int, dim: int, eps: float) -> None:
        super().__init__()
        ndim = weight.ndim
        if not -ndim <= dim < ndim:
            raise IndexError(f"Dimension out of range (expected to be in range of [-{ndim}, {ndim - 1}] but got {dim})")
        self.dim = dim % ndim
        self.n_power_iterations = n_power_iterations
        self.eps = eps
        if ndim > 1:  # a 1-D weight is normalized exactly in forward and needs no u, v
            weight_mat = self._matrix(weight.detach())
            # Drawn in torch's order, so the same seed gives the same u, v as torch's spectral_norm.
            u = F.normalize(weight_mat.new_empty(weight_mat.shape[0]).normal_(0, 1), dim=0, eps=eps)
            v = F.normalize(weight_mat.new_empty(weight_mat.shape[1]).normal_(0, 1), dim=0, eps=eps)
            # Plain torch here rather than the op: it runs once, and also on the meta device.
            u, v = power_iteration_ref(weight_mat, u, v, _INITIAL_POWER_ITERATIONS, eps)
            self.register_buffer("_u", u.to(weight.dtype))
            self.register_buffer("_v", v.to(weight.dtype))

    def _matrix(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.movedim(self.dim, 0).flatten(1)

    def _native_step(self, weight: torch.Tensor, divide_weight: bool) -> torch.Tensor | None:
        """A training step as one C++ op with its autograd in C++: W / sigma (or sigma), else None
        where that op does not apply (eval mode, not the CPU, another backend forced, torch.compile).

        It computes what :meth:`sigma` (and ``W / sigma``) computes, without the ~10 Python-level
        autograd nodes and op calls around a kernel that takes ~10 us on a small layer.
        """
        # plain_eager first: under torch.compile it is False before anything untraceable runs.
        if not (self.training and plain_eager((weight, self._u, self._v)) and weight.device.type == "cpu"
                and weight.dtype in FLOAT_DTYPES and _backends.forced_backend() in ("auto", "cpu")
                and _backends.cext_reason() is None):
            return None
        op = (torch.ops.fastgen_C.spectral_norm_layer_weight if divide_weight
              else torch.ops.fastgen_C.spectral_norm_layer_sigma)
        # Updates _u and _v in place; autograd keeps copies of them.
        return op(weight, self._u, self._v, self.dim, self.n_power_iterations, self.eps,
                  _sigma_floor(self.eps, weight.dtype))

    def weight_over_sigma(self, weight: torch.Tensor) -> torch.Tensor:
        """W / sigma(W); in training mode the power iteration first advances ``_u``, ``_v``."""
        native = self._native_step(weight, divide_weight=True)
        return native if native is not None else weight / self.sigma(weight)

    def sigma(self, weight: torch.Tensor) -> torch.Tensor:
        """sigma(W) = u^T W v as a 0-dim tensor, differentiable w.r.t. W, clamped below at eps.

        In training mode the power iteration first advances the buffers ``_u``, ``_v``.
        """
        weight_mat = self._matrix(weight)
        if self.training:
            native = self._native_step(weight, divide_weight=False)
            if native is not None:
                return native
            # The op returns new tensors: autograd keeps those, so the in-place buffer update below
            # (which reaches tensors DataParallel replicas share) never changes a saved tensor.
            sigma, u, v = spectral_norm_step(weight_mat, self._u, self._v, self.n_power_iterations, self.eps)
            with torch.no_grad():
                self._u.copy_(u)
                self._v.copy_(v)
        else:
            # Copies: autograd keeps u and v until backward, and the buffers may change in place before
            # then (load_state_dict, DDP's broadcast, a later training step).
            sigma = torch.vdot(self._u.clone(), torch.mv(weight_mat, self._v.clone()))
        return sigma.clamp_min(_sigma_floor(self.eps, sigma.dtype))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.ndim == 1:
            return F.normalize(weight, dim=0, eps=self.eps)
        return self.weight_over_sigma(weight)

    def right_inverse(self, value: torch.Tensor) -> torch.Tensor:
        # Identity, as torch's: assigning module.weight = W stores W as the original.
        return value

    def extra_repr(self) -> str:
        return f"n_power_iterations={self.n_power_iterations}, dim={self.dim}, eps={self.eps}"


# The layer computed with a given weight and bias: layer(module, input, weight, bias, *forward's other args).
def _linear(m: nn.Linear, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x, weight, bias)


def _conv(m: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return m._conv_forward(x, weight, bias)  # handles every padding_mode


_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _conv_transpose(m: nn.ConvTranspose2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    output_size: list[int] | None = None) -> torch.Tensor:
    nd = weight.ndim - 2
    output_padding = m._output_padding(x, output_size, m.stride, m.padding, m.kernel_size, nd, m.dilation)
    return _CONV_TRANSPOSE[nd](x, weight, bias, m.stride, m.padding, output_padding, m.groups, m.dilation)


def _embedding(m: nn.Embedding, idx: torch.Tensor, weight: torch.Tensor, bias: None) -> torch.Tensor:
    return F.embedding(idx, weight, m.padding_idx, None, m.norm_type, m.scale_grad_by_freq, m.sparse)


# About how many elements layer(x, W) has, from shapes alone (so it is a static choice under
# torch.compile), for the choice between dividing the weight and dividing the output.
def _linear_size(m: nn.Linear, x: torch.Tensor) -> int:
    return x.numel() // m.in_features * m.out_features


def _conv_size(m: nn.Conv2d, x: torch.Tensor) -> int:
    return x.numel() // m.in_channels * m.out_channels // math.prod(m.stride)


def _conv_transpose_size(m: nn.ConvTranspose2d, x: torch.Tensor) -> int:
    return x.numel() // m.in_channels * m.out_channels * math.prod(m.stride)


def _embedding_size(m: nn.Embedding, idx: torch.Tensor) -> int:
    return idx.numel() * m.embedding_dim


_LAYERS = {nn.Linear: (_linear, _linear_size),
           nn.Conv1d: (_conv, _conv_size), nn.Conv2d: (_conv, _conv_size), nn.Conv3d: (_conv, _conv_size),
           nn.ConvTranspose1d: (_conv_transpose, _conv_transpose_size),
           nn.ConvTranspose2d: (_conv_transpose, _conv_transpose_size),
           nn.ConvTranspose3d: (_conv_transpose, _conv_transpose_size),
           nn.Embedding: (_embedding, _embedding_size)}


def _sole_spectral_norm(module: nn.Module) -> _SpectralNorm | None:
    """The module's weight parametrization when layer(x, W) / sigma equals layer(x, module.weight)."""
    if not parametrize.is_parametrized(module, "weight") or parametrize._cache_enabled:
        return None  # removed since, or parametrize.cached() is reusing the computed weight
    chain = module.parametrizations["weight"]
    if len(chain) != 1 or not isinstance(chain[0], _SpectralNorm):
        return None  # another parametrization was registered on the weight since
    if getattr(module, "max_norm", None) is not None:
        return None  # Embedding(max_norm=...) renormalizes the weight it is given, in place
    return chain[0]


# The 1/sigma goes on the output only where that saves at least ~1 MB of float32 traffic: the
# division and the bias add are two more autograd nodes, each costing 20-80 us inside a model on a
# 2-core CPU (the caches are cold after each convolution), where writing a small W / sigma costs
# less. On the SN-GAN discriminator folding the two layers whose output is smaller than their
# weight doubled the spectral-norm overhead of a training step (7.3 ms against 3.6 ms, paired
# medians over 50 steps).
_FOLD_MIN_WEIGHT_NUMEL = 1 << 18
_FOLD_MAX_OUTPUT_FRACTION = 4  # the output at most a quarter of the weight


def _fold_sigma_into_output(weight_numel: int, output_numel: int) -> bool:
    return (weight_numel >= _FOLD_MIN_WEIGHT_NUMEL
            and output_numel * _FOLD_MAX_OUTPUT_FRACTION <= weight_numel)


def _install_forward(module: nn.Module, layer, output_size) -> None:
    """Give the module a forward that applies 1/sigma to the weight, or to the output when that is
    much smaller than a large weight (``_fold_sigma_into_output``).

    layer(x, W) / sigma + bias never materializes W / sigma, but autograd then keeps the undivided
    output for sigma's gradient, and the division and bias add cost two more passes and nodes:
    worth it only for large weights and small outputs (deep, narrow layers at small batch).
    It goes on the class that register_parametrization made for this module alone, so deepcopy
    keeps it and removing the module's last parametrization (which restores the class) drops it.
    """
    cls = type(module)
    standard_forward = cls.forward

    def forward(self, input, *args, **kwargs):
        sn = _sole_spectral_norm(self)
        if sn is None:
            return standard_forward(self, input, *args, **kwargs)
        weight = self.parametrizations.weight.original
        bias = getattr(self, "bias", None)
        if not _fold_sigma_into_output(weight.numel(), output_size(self, input)):
            # The bias goes into the layer, fused as in the standard forward.
            return layer(self, input, sn.weight_over_sigma(weight), bias, *args, **kwargs)
        out = layer(self, input, weight, None, *args, **kwargs) / sn.sigma(weight)
        if bias is None:
            return out
        # bias broadcasts over channel dim 1 (or 0 for an unbatched conv input); the cast keeps
        # autocast's output dtype, as the standard layer casts its bias.
        return out + bias.to(out.dtype).view(-1, *[1] * (weight.ndim - 2))

    cls.forward = forward


def spectral_norm(module: nn.Module, name: str = "weight", n_power_iterations: int = 1, eps: float = 1e-12,
                  dim: int | None = None) -> nn.Module:
    """Spectral normalization of ``module.<name>``: ``torch.nn.utils.parametrizations.spectral_norm``, faster.

    Same arguments, initial u, v (for the same RNG seed), state_dict keys
    (``parametrizations.<name>.original``, ``parametrizations.<name>.0._u`` and ``._v``) and results,
    so state_dicts move between the two in both directions. ``dim`` defaults to 1 for ConvTranspose
    and to 0 otherwise; the weight is viewed as a matrix [size(dim), -1].

    In training mode each forward runs ``n_power_iterations`` of power iteration on the buffers
    (one ``fastgen.ops.spectral_norm_step``); in eval mode sigma = u^T W v from the stored u, v.
    The gradient treats u, v as constants, as torch's does.

    For Linear, Conv1d/2d/3d, ConvTranspose1d/2d/3d and Embedding (without max_norm) with
    ``name="weight"``, forward computes ``layer(x, W) / sigma + bias`` when the weight has 2^18
    elements or more and the layer's output at most a quarter of that, and ``layer(x, W / sigma) + bias``
    otherwise, without going through the parametrization (one power iteration per forward). In
    training mode on the CPU, outside torch.compile, each forward's spectral-norm step is one C++ op
    with its autograd in C++ (power iteration, buffer update, sigma's clamp and the division). ``module.weight`` still returns W / sigma
    (and, in training mode, runs a power iteration, as torch's does). An all-zero weight has
    sigma = 0: sigma is clamped below at eps, so such a layer outputs its bias (or zero) where
    torch's outputs NaN.

    Works under ``torch.compile(fullgraph=True)`` and DistributedDataParallel (which keeps u, v in
    sync by broadcasting the buffers). A weight with NaN or Inf raises ValueError in training mode.
    """
    weight = getattr(module, name, None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"Module '{module}' has no parameter or buffer with name '{name}'")
    checks.positive_int("n_power_iterations", n_power_iterations)
    eps = checks.positive_float("eps", eps)
    if dim is None:
        dim = 1 if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) else 0
    parametrize.register_parametrization(module, name, _SpectralNorm(weight, n_power_iterations, dim, eps))
    # Only where the standard forward is in use: a subclass's own forward may use the weight otherwise.
    layer = next((fns for cls, fns in _LAYERS.items() if type(module).forward is cls.forward), None)
    if name == "weight" and layer is not None:
        _install_forward(module, *layer)
    return module
