"""The user's preprocessing: the input size, zero padding and normalisation a model trained elsewhere expects.

A model trained elsewhere sees its own inputs: 28x28 Fashion-MNIST without normalisation, or
ImageNet mean/std at 224. :class:`Preprocessing` says how to turn a dataset's images into those
inputs, and :func:`load_dataset` applies it once, so that everything that shows the model data
(evaluation, calibration, sensitivity, batch-norm re-estimation, distillation, fine-tune, the
export's input shape) sees the same inputs.

Order: the dataset's images (28x28 for MNIST-style files, 32x32 for CIFAR-10, image folders read at
the size asked) are resized to ``input_size - 2 * pad``, bordered with ``pad`` zero pixels, scaled to
[0, 1], then normalised with ``mean``/``std`` (each dataset's own by default; none with
``normalize=False``) or handed to ``transform`` (``package.module:callable``: a float batch
(B, C, H, W) in [0, 1] in, the batch the model sees out), which then replaces the normalisation.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from workloads.errors import FieldError


class PreprocessingError(FieldError):
    """A preprocessing option that cannot be used: ``field`` is ``value``; ``allowed`` says what would do."""


@dataclass(frozen=True)
class Preprocessing:
    """How the dataset's images become the model's inputs; every field ``None`` (or True) keeps the dataset's own."""

    input_size: int | None = None  # side of the square images the model sees; None: the dataset's own
    pad: int | None = None  # zero border in pixels (inside input_size); None: the dataset's own (2 for MNIST-style, else 0)
    mean: tuple[float, ...] | None = None  # per channel (or one for all), in [0, 1] units; None: the dataset's own
    std: tuple[float, ...] | None = None
    normalize: bool = True  # False: the model sees pixels in [0, 1]
    transform: str | None = None  # package.module:callable applied to each [0, 1] batch instead of mean/std

    def __post_init__(self) -> None:
        if self.input_size is not None and (not _is_int(self.input_size) or self.input_size < 1):
            raise PreprocessingError("input_size", self.input_size, "an integer >= 1, or null for the dataset's own")
        if self.pad is not None and (not _is_int(self.pad) or self.pad < 0):
            raise PreprocessingError("pad", self.pad, "an integer >= 0, or null for the dataset's own")
        if self.input_size is not None and self.pad is not None and self.input_size - 2 * self.pad < 1:
            raise PreprocessingError("pad", self.pad, f"less than half of input_size ({self.input_size}): the border must leave an image")
        if (self.mean is None) != (self.std is None):
            raise PreprocessingError(
                "std" if self.std is None else "mean",
                self.std if self.std is None else self.mean,
                "given with the other of mean and std (one number per channel, or one for all), or neither given",
            )
        for name in ("mean", "std"):
            values = getattr(self, name)
            numbers = isinstance(values, tuple) and values and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
            if values is not None and not numbers:
                raise PreprocessingError(name, list(values) if isinstance(values, tuple) else values, "a list of numbers, one per channel")
        if self.std is not None and min(self.std) <= 0:
            raise PreprocessingError("std", list(self.std), "numbers > 0")
        if not isinstance(self.normalize, bool):
            raise PreprocessingError("normalize", self.normalize, "true or false")
        if not self.normalize and self.mean is not None:
            raise PreprocessingError("normalize", self.normalize, "true when mean and std are given (false means no normalisation)")
        if self.transform is not None:
            if not isinstance(self.transform, str) or ":" not in self.transform:
                raise PreprocessingError("transform", self.transform, "'package.module:callable', or null")
            if self.mean is not None or not self.normalize:
                raise PreprocessingError(
                    "transform", self.transform, "null when mean/std or normalize are given (the transform replaces the normalisation)"
                )

    @property
    def is_default(self) -> bool:
        return self == Preprocessing()

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.__dict__.items() if v is not None and not (k == "normalize" and v)]
        return ", ".join(parts) if parts else "the dataset's own preprocessing"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def geometry(raw_side: int, default_pad: int, pre: Preprocessing) -> tuple[int, int]:
    """(side the images are resized to, zero border) for images read at ``raw_side``."""
    pad = default_pad if pre.pad is None else pre.pad
    size = raw_side + 2 * pad if pre.input_size is None else pre.input_size
    if size - 2 * pad < 1:
        raise PreprocessingError("pad", pad, f"less than half of input_size ({size}): the border must leave an image")
    return size - 2 * pad, pad


def resize_and_pad(images: torch.Tensor, side: int, pad: int, chunk: int = 2048) -> torch.Tensor:
    """uint8 (N, C, H, W) resized to (side, side) (bilinear, antialiased) and bordered with ``pad`` zeros."""
    if images.shape[-2:] != (side, side):
        parts = []
        for start in range(0, len(images), chunk):
            part = images[start : start + chunk].float()
            part = F.interpolate(part, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
            parts.append(part.round_().clamp_(0, 255).to(torch.uint8))
        images = torch.cat(parts) if parts else images.new_zeros((0, images.shape[1], side, side))
    if pad:
        images = F.pad(images, (pad,) * 4)
    return images


def statistics(
    pre: Preprocessing, channels: int, default_mean: torch.Tensor, default_std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (mean, std) the batches are normalised with, one per channel."""
    if pre.transform is not None or not pre.normalize:
        return torch.zeros(channels), torch.ones(channels)
    if pre.mean is None:
        return default_mean, default_std
    values = []
    for name in ("mean", "std"):
        given = getattr(pre, name)
        if len(given) not in (1, channels):
            raise PreprocessingError(name, list(given), f"{channels} number(s), one per channel of the data, or one for all")
        values.append(torch.tensor(given * (channels if len(given) == 1 else 1), dtype=torch.float32))
    return values[0], values[1]


@functools.lru_cache(maxsize=16)
def resolve_transform(path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    module_name, _, attr = path.partition(":")
    try:
        transform = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as error:
        raise PreprocessingError("transform", path, f"an importable 'package.module:callable' ({error})") from None
    if not callable(transform):
        raise PreprocessingError("transform", path, f"a callable (it is a {type(transform).__name__})")
    return transform


def apply_transform(path: str, batch: torch.Tensor) -> torch.Tensor:
    out = resolve_transform(path)(batch)
    if not isinstance(out, torch.Tensor) or out.dim() < 2 or out.shape[0] != batch.shape[0] or not out.is_floating_point():
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise PreprocessingError(
            "transform", path, f"a callable returning a float tensor with the batch's size (a batch {tuple(batch.shape)} became {shape})"
        )
    return out
