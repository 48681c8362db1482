"""Neural style transfer (Gatys, Ecker & Bethge 2016) on a frozen VGG16, with Gram matrices from
:func:`fastgen.ops.gram_matrix`.

The image being optimized starts as a copy of the content image. Its loss is

    content_weight * MSE(phi_relu4_2(x), phi_relu4_2(content))
    + style_weight * sum over l in {relu1_1, relu2_1, relu3_1, relu4_1, relu5_1} of MSE(G_l(x), G_l(style)),

where G_l = F F^T / (C * H * W) is the Gram matrix of the C x (H * W) feature map F of layer l,
normalized so that layers of any size weigh alike. Images are RGB in [0, 1]; the extractor applies
the ImageNet normalization VGG was trained with.

VGG16 is defined here with torchvision's ``features`` layout and parameter names, so torchvision's
ImageNet checkpoint ``vgg16-397923af.pth`` loads as is (no torchvision needed). Weights are read only
from disk: a path, or torch hub's cache (``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth``,
where ``torchvision.models.vgg16(weights="IMAGENET1K_V1")`` leaves it). ``weights=None`` gives a
randomly initialized network (tests).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fastgen.models.training import TrainSpec, register
from fastgen.ops import gram_matrix

VGG16_FILE = "vgg16-397923af.pth"
# torchvision's vgg16().features: channel counts of the 3x3 convolutions, "M" = 2x2 max pooling.
VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Indices in VGG16.features of the ReLUs the losses read (the conventional Gatys et al. choice).
STYLE_LAYERS = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 18, "relu5_1": 25}
CONTENT_LAYER = {"relu4_2": 20}
IMAGE_SIZE = 64  # default images: small enough for a CPU run of a few hundred steps


def vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features``, layer for layer (so its state_dict keys match)."""
    layers: list[nn.Module] = []
    channels = 3
    for entry in VGG16_CONFIG:
        if entry == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, entry, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = entry
    return nn.Sequential(*layers)


def default_vgg16_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


def load_vgg16_features(weights: str | os.PathLike | None = "imagenet") -> nn.Sequential:
    """VGG16 features with ImageNet weights ("imagenet": torch hub's cache), a checkpoint at a path,
    or random initialization (None). A checkpoint may be torchvision's whole VGG16 (``features.*`` and
    ``classifier.*`` keys: the classifier is ignored) or the features alone."""
    features = vgg16_features()
    if weights is None:
        return features
    path = default_vgg16_path() if weights == "imagenet" else Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"VGG16 weights not found at {path}. fastgen downloads nothing: copy torchvision's ImageNet "
            f"checkpoint {VGG16_FILE} (https://download.pytorch.org/models/{VGG16_FILE}) to "
            f"{default_vgg16_path()} or pass its path as weights=...; weights=None uses random weights")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if any(key.startswith("features.") for key in state):
        state = {key.removeprefix("features."): value for key, value in state.items() if key.startswith("features.")}
    try:
        features.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"weights: {path} is not a torchvision VGG16 checkpoint: {error}") from None
    return features


class StyleFeatures(nn.Module):
    """Frozen VGG16 up to the deepest layer the losses read: images [B, 3, H, W] in [0, 1] ->
    {layer name: feature map}."""

    def __init__(self, weights: str | os.PathLike | None = "imagenet"):
        super().__init__()
        self.layers = {**STYLE_LAYERS, **CONTENT_LAYER}
        self.features = load_vgg16_features(weights)[:max(self.layers.values()) + 1]
        # In-place ReLUs would overwrite the maps handed out (and autograd needs them).
        for layer in self.features:
            if isinstance(layer, nn.ReLU):
                layer.inplace = False
        self.features.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W] RGB, got shape {tuple(images.shape)}")
        x = (images - self.mean) / self.std
        wanted = {index: name for name, index in self.layers.items()}
        out = {}
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in wanted:
                out[wanted[index]] = x
        return out


def normalized_gram(features: torch.Tensor) -> torch.Tensor:
    """G = F F^T / (C * H * W) for feature maps [B, C, H, W]."""
    _, c, h, w = features.shape
    return gram_matrix(features) / (c * h * w)


def content_loss(features: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(F.mse_loss(features[name], target[name]) for name in CONTENT_LAYER)


def style_loss(features: dict[str, torch.Tensor], target_grams: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over the style layers of the MSE between normalized Gram matrices."""
    return sum(F.mse_loss(normalized_gram(features[name]), target_grams[name]) for name in STYLE_LAYERS)


class StyleTransfer(nn.Module):
    """The image being optimized (a parameter, started at ``content``) and the frozen extractor,
    with the targets of ``content`` and ``style`` precomputed."""

    def __init__(self, content: torch.Tensor, style: torch.Tensor, extractor: StyleFeatures,
                 content_weight: float = 1.0, style_weight: float = 1e6):
        super().__init__()
        for name, image in (("content", content), ("style", style)):
            if image.dim() != 4 or image.shape[:2] != (1, 3):
                raise ValueError(f"{name} must be one RGB image [1, 3, H, W], got shape {tuple(image.shape)}")
        self.extractor = extractor
        self.content_weight, self.style_weight = content_weight, style_weight
        self.image = nn.Parameter(content.detach().clone())
        with torch.no_grad():
            content_features = extractor(content)
            style_features = extractor(style)
        self.register_buffer("content", content.detach().clone())
        self.register_buffer("style", style.detach().clone())
        for name in CONTENT_LAYER:
            self.register_buffer(f"target_{name}", content_features[name])
        for name in STYLE_LAYERS:
            self.register_buffer(f"target_gram_{name}", normalized_gram(style_features[name]))

    def losses(self) -> dict[str, torch.Tensor]:
        features = self.extractor(self.image)
        content_targets = {name: getattr(self, f"target_{name}") for name in CONTENT_LAYER}
        style_targets = {name: getattr(self, f"target_gram_{name}") for name in STYLE_LAYERS}
        content = self.content_weight * content_loss(features, content_targets)
        style = self.style_weight * style_loss(features, style_targets)
        return {"loss": content + style, "content": content, "style": style}


def optimize(model: StyleTransfer, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """One gradient step on the image; pixels stay in [0, 1]."""
    optimizer.zero_grad()
    losses = model.losses()
    losses["loss"].backward()
    optimizer.step()
    with torch.no_grad():
        model.image.clamp_(0, 1)
    return {name: value.item() for name, value in losses.items()}


def transfer(content: torch.Tensor, style: torch.Tensor, steps: int = 300, *,
             weights: str | os.PathLike | None = "imagenet", content_weight: float = 1.0,
             style_weight: float = 1e6, lr: float = 0.02) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """``content`` repainted in the style of ``style`` (RGB images [1, 3, H, W] in [0, 1], any sizes)
    by ``steps`` Adam steps of learning rate ``lr`` on the pixels: the image and every step's losses."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    model = StyleTransfer(content, style, StyleFeatures(weights).to(content.device), content_weight, style_weight)
    opt = torch.optim.Adam([model.image], lr=lr)
    history = [optimize(model, opt) for _ in range(steps)]
    return model.image.detach().clone(), history


def default_images(size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled photos as (content, style): china.jpg and flower.jpg, centre-cropped
    square and resized to size x size, [1, 3, size, size] in [0, 1]."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    by_name = {Path(name).name: image for name, image in zip(photos.filenames, photos.images)}

    def prepare(image) -> torch.Tensor:
        x = torch.tensor(image).permute(2, 0, 1).float().div(255)[None]
        h, w = x.shape[-2:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = x[..., top:top + side, left:left + side]
        return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)

    return prepare(by_name["china.jpg"]), prepare(by_name["flower.jpg"])


# ---------------------------------------------------------------- fastgen train style_transfer

def _data(seed: int):
    """The content (label 0) and style (label 1) images as a batch of two."""
    content, style = default_images()
    return torch.cat([content, style]), torch.tensor([0, 1])


def _build() -> StyleTransfer:
    content, style = default_images()
    return StyleTransfer(content, style, StyleFeatures())


def _step(model: StyleTransfer, optimizers: dict, batch, step: int) -> dict[str, float]:
    # The model holds the two images and their targets since build(): the batch adds nothing.
    return optimize(model, optimizers["model"])


def _grid(model: StyleTransfer, batch) -> torch.Tensor:
    return torch.cat([model.content, model.style, model.image.clamp(0, 1)])


register(TrainSpec(
    name="style_transfer",
    summary="neural style transfer on VGG16 (ImageNet weights from torch hub's cache): "
            "china.jpg in the style of flower.jpg",
    build=_build,
    data=_data,
    optimizers=lambda model: {"model": torch.optim.Adam([model.image], lr=0.02)},
    step=_step,
    grid=_grid,
    batch_size=2,
    steps=300,
))
