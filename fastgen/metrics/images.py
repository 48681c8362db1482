"""Image folders for FID: listing, decoding (Pillow), fixed-size batches, and their feature statistics.

Images become float32 [3, H, W] in [0, 1] (pixel / 255, as pytorch-fid's ``ToTensor``). A batch
needs one size, so every image is resized, one at a time, to a fixed ``size`` with ``torch``'s
``F.interpolate``: pass the resize the feature extractor itself does (299x299 bilinear,
``align_corners=False`` for Inception; 8x8 area for the digits extractor), and each image reaches the
network exactly as it would have alone, with no second resampling. Without ``size``, the first
image's size is used.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fastgen.metrics.fid import FeatureStats

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
RESIZE_MODES = ("bilinear", "bicubic", "area", "nearest-exact")


def list_images(folder: str | os.PathLike) -> list[str]:
    """The ``.png``, ``.jpg`` and ``.jpeg`` files (any case) directly in ``folder``, sorted by name:
    FeatureStats depends on the row order, so a fixed order makes the statistics reproducible."""
    folder = os.fspath(folder)
    if not os.path.exists(folder):
        raise FileNotFoundError(f"{folder} does not exist")
    if not os.path.isdir(folder):
        raise NotADirectoryError(f"{folder} is not a folder")
    paths = [os.path.join(folder, name) for name in sorted(os.listdir(folder))
             if name.lower().endswith(IMAGE_EXTENSIONS)]
    paths = [path for path in paths if os.path.isfile(path)]
    if not paths:
        raise ValueError(f"{folder} holds no images (expected {', '.join(IMAGE_EXTENSIONS)} files directly in it)")
    return paths


def load_image(path: str | os.PathLike) -> torch.Tensor:
    """The image at ``path`` as float32 [3, H, W] in [0, 1]: converted to RGB by Pillow (grayscale
    replicated to the three channels, alpha dropped, as pytorch-fid). ValueError names an unreadable file."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")  # decodes: truncated files fail here, not at open
    except (OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image {os.fspath(path)}: {error}") from error
    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float().div_(255)


def resize_image(image: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """image [C, H, W] resized to ``size`` (height, width) by ``F.interpolate`` (``align_corners=False``
    for the linear modes, as pytorch-fid); returned as is when it already has that size."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    align_corners = False if mode in ("bilinear", "bicubic") else None
    return F.interpolate(image[None], size=tuple(size), mode=mode, align_corners=align_corners)[0]


def iter_image_batches(paths: Sequence[str | os.PathLike], batch_size: int, size: tuple[int, int] | None = None,
                       mode: str = "bilinear", num_workers: int = 0) -> Iterator[torch.Tensor]:
    """Batches [B, 3, H, W] of the images at ``paths``, in order, each resized to ``size`` (default: the
    first image's size) with ``mode``; the last batch may be smaller.

    ``num_workers`` threads decode and resize (Pillow and torch release the GIL while they work) the
    next batch while the caller processes the current one, so memory holds two batches, never the
    folder. 0 loads in the calling thread, on demand.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
    if mode not in RESIZE_MODES:
        raise ValueError(f"mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    if not paths:
        return
    if size is None:
        size = tuple(load_image(paths[0]).shape[-2:])

    def load(path: str | os.PathLike) -> torch.Tensor:
        return resize_image(load_image(path), size, mode)

    batches = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    if num_workers == 0:
        for batch in batches:
            yield torch.stack([load(path) for path in batch])
        return
    with ThreadPoolExecutor(num_workers) as pool:
        pending = pool.map(load, batches[0])
        for batch in batches[1:]:
            following = pool.map(load, batch)  # queued before waiting on the current batch: no idle threads
            yield torch.stack(list(pending))
            pending = following
        yield torch.stack(list(pending))


def image_feature_stats(paths: Sequence[str | os.PathLike], model: Callable[[torch.Tensor], torch.Tensor], *,
                        batch_size: int = 50, size: tuple[int, int] | None = None, mode: str = "bilinear",
                        device: str | torch.device = "cpu", num_workers: int = 0,
                        progress: Callable[[int, int], None] | None = None) -> FeatureStats:
    """Streaming :class:`FeatureStats` of ``model``'s features [B, dim] over the images at ``paths``.

    Batches come from :func:`iter_image_batches` and go to ``device`` (where ``model`` must already
    be); ``model`` runs under ``torch.inference_mode()``, and only the running statistics are kept,
    never all the features. ``progress(done, total)`` is called with image counts before the first
    batch and after each one.
    """
    if not paths:
        raise ValueError("paths is empty: no images to compute statistics of")
    stats: FeatureStats | None = None
    done, total = 0, len(paths)
    if progress is not None:
        progress(done, total)
    for batch in iter_image_batches(paths, batch_size, size, mode, num_workers):
        with torch.inference_mode():
            features = model(batch.to(device))
        if features.dim() != 2 or features.shape[0] != batch.shape[0]:
            raise ValueError(f"the model must return features [batch, dim], got shape {tuple(features.shape)} "
                             f"for a batch of {batch.shape[0]} images")
        if stats is None:
            stats = FeatureStats(features.shape[1], device=device)
        # Outside inference mode: the statistics' buffers must stay ordinary tensors, updatable later.
        stats.update(features)
        done += batch.shape[0]
        if progress is not None:
            progress(done, total)
    return stats
