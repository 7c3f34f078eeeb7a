"""The model registry: CIFAR-style models, torchvision models (``tv:<name>``) and users' own (``pkg.module:factory``).

Every factory takes ``in_channels`` and ``num_classes``. torchvision is imported only when a
``tv:`` name is asked for: with the CPU torch wheel its compiled ops fail to load, and that
must not break the rest of the platform.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

from torch import nn

from workloads.models.mobilenetv2 import mobilenetv2
from workloads.models.resnet_cifar import resnet18, resnet20, resnet32, resnet56
from workloads.models.vgg import vgg11_bn, vgg16_bn

ModelFactory = Callable[..., nn.Module]

MODELS: dict[str, ModelFactory] = {
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet18": resnet18,
    "vgg11_bn": vgg11_bn,
    "vgg16_bn": vgg16_bn,
    "mobilenetv2": mobilenetv2,
}

TORCHVISION_PREFIX = "tv:"


class UnknownModelError(ValueError):
    """A model name that is neither registered, nor ``tv:<name>``, nor an import path."""


class ModelNotAvailableError(RuntimeError):
    """A model whose code exists but cannot be loaded here (torchvision missing or broken)."""


def model_names() -> list[str]:
    """Registered model names, in registry order."""
    return list(MODELS)


def build_model(name: str, in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """Build a freshly initialised model by registry name, ``tv:<name>`` or ``package.module:factory``."""
    if name in MODELS:
        return MODELS[name](in_channels=in_channels, num_classes=num_classes)
    if name.startswith(TORCHVISION_PREFIX):
        return _torchvision_model(name[len(TORCHVISION_PREFIX) :], in_channels, num_classes)
    if ":" in name:
        return _user_model(name, in_channels, num_classes)
    raise UnknownModelError(
        f"unknown model {name!r}; registered models: {', '.join(MODELS)}; "
        f"or 'tv:<torchvision name>' (e.g. tv:resnet18), or 'package.module:factory'"
    )


def _import_torchvision():
    try:
        return importlib.import_module("torchvision")
    except Exception as error:  # noqa: BLE001 - a broken build raises RuntimeError/OSError, not ImportError
        raise ModelNotAvailableError(
            f"torchvision models need torchvision, which could not be imported here ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}). Install a torchvision build that matches "
            f"your torch (pip install 'galen-ray[vision]'; with the CPU-only torch wheel no matching "
            f"torchvision exists), or use a registered model: {', '.join(MODELS)}"
        ) from error


def _torchvision_model(name: str, in_channels: int, num_classes: int) -> nn.Module:
    torchvision = _import_torchvision()
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise UnknownModelError(f"unknown torchvision model {name!r}; torchvision has: {', '.join(sorted(available))}")
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if in_channels != 3:
        _replace_first_conv(model, in_channels)
    return model


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the first Conv2d for one with ``in_channels`` inputs, keeping every other setting."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(
                    parent,
                    child_name,
                    nn.Conv2d(
                        in_channels,
                        child.out_channels,
                        child.kernel_size,
                        child.stride,
                        child.padding,
                        child.dilation,
                        1 if child.groups == child.in_channels == 3 else child.groups,
                        child.bias is not None,
                    ),
                )
                return
    raise ModelNotAvailableError("cannot change the input channels: the model has no Conv2d")


def _user_model(path: str, in_channels: int, num_classes: int) -> nn.Module:
    module_name, _, attr = path.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise UnknownModelError(f"cannot load model factory {path!r}: {error}") from error
    params = inspect.signature(factory).parameters
    kwargs = {key: value for key, value in (("in_channels", in_channels), ("num_classes", num_classes)) if key in params}
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise UnknownModelError(f"model factory {path!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
