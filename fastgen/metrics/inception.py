"""Inception-v3 as FID and the Inception Score use it: the network of pytorch-fid's ``fid_inception_v3``.

pytorch-fid (github.com/mseitzer/pytorch-fid) ports the 2015 TensorFlow Inception graph behind the
reference FID (Heusel et al. 2017) and Inception Score (Salimans et al. 2016) code. That graph
differs from torchvision's Inception-v3 in four places, all reproduced here:

* the average pools of the A, C and first E blocks exclude the zero padding (TensorFlow's pooling);
* the second E block (``Mixed_7c``) pools its last branch with a 3x3 max-pool, not an average pool;
* the classifier has 1008 outputs (the 1000 ImageNet classes and 8 unused ones);
* there is no auxiliary classifier.

Module, parameter and buffer names follow torchvision's ``Inception3``, so pytorch-fid's weight file
(``pt_inception-2015-12-05-6726825d.pth``) loads with strict key matching. Nothing is ever
downloaded: weights come from a local path or from torch hub's checkpoint cache.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fastgen.ops import _checks

FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_FILENAME}"
INPUT_SIZE = 299
# Smallest side the trunk accepts without resizing: its stride-2 stages leave a 1x1 map at 75.
MIN_INPUT_SIZE = 75
FEATURE_DIM = 2048
NUM_LOGITS = 1008
# Shown in key-mismatch errors; a wrong file can differ in hundreds of keys.
MAX_KEYS_SHOWN = 10


def default_inception_weights_path() -> str:
    """Where ``InceptionV3FID(weights="default")`` looks: torch hub's checkpoint cache, the place
    pytorch-fid's own download would have put the file."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", FID_WEIGHTS_FILENAME)


class BasicConv2d(nn.Module):
    """conv (no bias: BatchNorm follows) -> BatchNorm (TensorFlow's eps 0.001) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_3x3(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow averages over the valid pixels only; torchvision's Inception counts the padding.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (Mixed_5b..5d): 1x1, 5x5, double 3x3 and pooled 1x1 branches."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), branch5x5, branch3x3dbl, self.branch_pool(_avg_pool_3x3(x))], 1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction (Mixed_6a): stride-2 3x3, double 3x3 and max-pool branches."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), branch3x3dbl, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block (Mixed_6b..6e): 1x1, factorized 7x7, double factorized 7x7 and pooled 1x1 branches."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = x
        for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5):
            branch7x7dbl = conv(branch7x7dbl)
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, self.branch_pool(_avg_pool_3x3(x))], 1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction (Mixed_7a): 3x3, factorized 7x7 then 3x3, and max-pool branches."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = x
        for conv in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = conv(branch7x7x3)
        return torch.cat([branch3x3, branch7x7x3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block (Mixed_7b, Mixed_7c): 1x1, split 3x3, double split 3x3 and pooled 1x1 branches.

    ``max_pool`` selects the 3x3 max-pool that the FID graph's last block (Mixed_7c) uses in its
    pool branch instead of the padding-excluding average pool.
    """

    def __init__(self, in_channels: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(b), self.branch3x3_2b(b)], 1)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool_3x3(x)
        return torch.cat([self.branch1x1(x), branch3x3, branch3x3dbl, self.branch_pool(pooled)], 1)


def check_images(name: str, images: object, channels: tuple[int, ...]) -> None:
    """``images`` is a float tensor [N, C, H, W] with C one of ``channels``."""
    _checks.tensor(name, images)
    if images.dim() != 4:
        raise ValueError(f"{name} must be a 4-D tensor [N, C, H, W], got shape {tuple(images.shape)}")
    if images.shape[1] not in channels:
        expected = " or ".join(str(c) for c in channels)
        raise ValueError(f"{name} must have {expected} channels (dim 1 of [N, C, H, W]), got shape "
                         f"{tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{name} must be a float tensor with values in [0, 1], got {images.dtype}")


class InceptionV3FID(nn.Module):
    """images [N, 3, H, W] in [0, 1] -> the 2048-d pool features [N, 2048] of pytorch-fid's FID Inception.

    ``weights``: ``None`` for random weights (tests; reproducible under ``torch.manual_seed``),
    ``"default"`` for pytorch-fid's file in torch hub's cache (:func:`default_inception_weights_path`),
    or the path of that file. A missing file raises FileNotFoundError saying where to put it.

    ``resize`` resizes inputs to 299x299 bilinearly (align_corners=False), as pytorch-fid does;
    without it the inputs must be at least 75x75. ``normalize_input`` maps [0, 1] to the [-1, 1]
    the network was trained on; turn it off for inputs already in [-1, 1].

    The module is always in eval mode: ``train()`` is a no-op. BatchNorm must use its stored
    statistics, or features (and so FID) would depend on how the images were batched. Its
    parameters do not require gradients; gradients with respect to the images still flow.
    """

    def __init__(self, weights: str | os.PathLike | None = None, resize: bool = True,
                 normalize_input: bool = True) -> None:
        super().__init__()
        self.resize = resize
        self.normalize_input = normalize_input
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(FEATURE_DIM, NUM_LOGITS)
        if weights is None:
            self._init_random()
        else:
            load_inception_weights(self, default_inception_weights_path() if weights == "default" else weights)
        # A fixed metric network, as in pytorch-fid: no parameter gradients (inputs can still get them).
        self.requires_grad_(False)
        super().train(False)

    def _init_random(self) -> None:
        # He init keeps activations O(1) through the ~20 conv layers (eval BatchNorm is ~identity here),
        # so random features are not vanishingly small.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")

    def train(self, mode: bool = True) -> InceptionV3FID:
        """Kept in eval mode whatever ``mode`` is (see the class docstring)."""
        return super().train(False)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        check_images("images", images, channels=(3,))
        x = images.to(self.fc.weight.dtype)
        if self.resize:
            if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
                x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        elif min(x.shape[-2:]) < MIN_INPUT_SIZE:
            raise ValueError(f"images must be at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} when resize=False, got "
                             f"shape {tuple(images.shape)}")
        return 2 * x - 1 if self.normalize_input else x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self._prepare(images)
        for stage in (self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3, self.maxpool1,
                      self.Conv2d_3b_1x1, self.Conv2d_4a_3x3, self.maxpool2,
                      self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,
                      self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,
                      self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = stage(x)
        return torch.flatten(self.avgpool(x), 1)

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pool features [N, 2048], logits [N, 1008]), the logits for the Inception Score.

        The logits include the fc bias. (OpenAI's original Inception Score code multiplied the
        features by the weight matrix alone; scores computed here follow the network as defined.)
        """
        features = self(images)
        return features, self.fc(features)


def _describe_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_KEYS_SHOWN])
    return shown + (f", ... ({len(keys) - MAX_KEYS_SHOWN} more)" if len(keys) > MAX_KEYS_SHOWN else "")


def load_inception_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load pytorch-fid's Inception weight file (or any state_dict with the same keys) into ``model``.

    Keys must match exactly, except that BatchNorm ``num_batches_tracked`` counters may be absent:
    pytorch-fid's file predates them, and eval-mode BatchNorm never reads them. Any other missing
    or unexpected key, or a shape mismatch, raises ValueError listing them, before ``model`` is
    touched. Returns ``model``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Inception weights not found at {path}. fastgen never downloads them: fetch {FID_WEIGHTS_URL} "
            f"(pytorch-fid's FID Inception weights) yourself and save it as {path} (for weights='default' "
            f"the place is torch hub's cache, {default_inception_weights_path()})")
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{path} must hold a state_dict (a mapping of names to tensors), got "
                         f"{type(state_dict).__name__}")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k} {tuple(state_dict[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
                  if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        problems = [f"{label}: {_describe_keys(keys)}" for label, keys in
                    (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
                    if keys]
        raise ValueError(f"{path} does not hold FID Inception-v3 weights; " + "; ".join(problems))
    completed = dict(state_dict)
    for key, value in expected.items():
        completed.setdefault(key, torch.zeros_like(value))  # only num_batches_tracked can be absent here
    model.load_state_dict(completed, strict=True)
    return model
