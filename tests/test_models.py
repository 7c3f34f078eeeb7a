from __future__ import annotations

import importlib.util
import sys
import textwrap

import pytest
import torch

from workloads.models import MODELS, ModelNotAvailableError, UnknownModelError, build_model


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("channels", [1, 3])
def test_forward_shape(name: str, channels: int) -> None:
    model = build_model(name, in_channels=channels, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, 32, 32))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def _params(name: str) -> int:
    return sum(p.numel() for p in build_model(name, 3, 10).parameters())


def test_resnet_parameter_counts_match_published() -> None:
    # He et al. 2016, Table 6: ResNet-20 0.27M, ResNet-56 0.85M (option-A shortcuts). Ours use 1x1
    # projections where the shape changes (option B): +2,752 parameters, exact counts asserted.
    assert _params("resnet20") == 272_474
    assert _params("resnet56") == 855_770
    assert round(_params("resnet20") / 1e6, 2) == 0.27
    assert abs(_params("resnet56") - 0.85e6) / 0.85e6 < 0.01
    assert round(_params("resnet18") / 1e6, 1) == 11.2  # CIFAR ResNet-18, 11.17M


def test_unknown_model_lists_registered_names() -> None:
    with pytest.raises(
        UnknownModelError,
        match=r"unknown model 'resnet99'; registered models: resnet20, resnet32, resnet56, "
        r"resnet18, vgg11_bn, vgg16_bn, mobilenetv2",
    ):
        build_model("resnet99")


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed here")
def test_torchvision_missing_gets_install_hint() -> None:
    with pytest.raises(
        ModelNotAvailableError,
        match=r"torchvision models need torchvision, which could not be imported here "
        r"\(ModuleNotFoundError: No module named 'torchvision'\)\. Install",
    ):
        build_model("tv:resnet18")


def test_torchvision_broken_import_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    # With the CPU torch wheel, a registry torchvision fails while loading its compiled ops (a
    # RuntimeError, not ImportError). Simulate exactly that failure at import time.
    class BrokenFinder:
        def find_spec(self, fullname, path=None, target=None):
            if fullname == "torchvision":
                raise RuntimeError("operator torchvision::nms does not exist")
            return None

    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.setattr(sys, "meta_path", [BrokenFinder(), *sys.meta_path])
    with pytest.raises(ModelNotAvailableError, match=r"\(RuntimeError: operator torchvision::nms does not exist\)"):
        build_model("tv:resnet18")


def test_user_model_by_import_path(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_models.py").write_text(
        textwrap.dedent("""
        from torch import nn
        def tiny(in_channels, num_classes):
            return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
        def not_a_model():
            return 42
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("my_models:tiny", in_channels=1, num_classes=5)
    assert model(torch.randn(3, 1, 32, 32)).shape == (3, 5)
    with pytest.raises(UnknownModelError, match=r"model factory 'my_models:not_a_model' returned int, not a torch.nn.Module"):
        build_model("my_models:not_a_model")
    with pytest.raises(UnknownModelError, match=r"cannot load model factory 'my_models:missing'"):
        build_model("my_models:missing")
