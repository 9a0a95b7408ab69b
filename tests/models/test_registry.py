"""Registry-driven tests: every registered model builds, runs forward and a train step at batch 2 on its default
input, and declares exactly the kernel hot paths it contains."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn as nn

import models
from models.registry import HOT_PATHS, register_model, unregister_model

ALL = [n for n in models.list_models() if models.get_spec(n).family != "fake"]


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


def _contains(model: nn.Module, hot_path: str) -> bool:
    if hot_path == "depthwise_conv":
        return any(isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels and m.groups > 1
                   for m in model.modules())
    return any(getattr(m, "hot_path", None) == hot_path for m in model.modules())


# Dense models (detection, segmentation) take any multiple of 32: the smoke test runs them at 256 px instead of
# 512-800 px (unet_transposed's train step at 512 px was the slowest model test, 67 s on a loaded 2-core AVX2 machine).
# Their full-size behaviour is covered by the per-family tests (Faster R-CNN FLOPs at 800, torchvision equivalence).
SMOKE_SIDE = 256


# Variants over 200M parameters (ViT-L/16, MAE ViT-L/16) run the smoke test at batch 1: their family's smaller
# variants (ViT-B/16, MAE ViT-B/16) run the same code at batch 2, which is what catches batch-mixing bugs; the two
# L-variants were the slowest model tests (24 s and 16 s of CPU here at batch 2). Models with BatchNorm keep batch 2.
BIG_PARAMS = 200_000_000


def _smoke_batch(model: nn.Module) -> int:
    big = sum(p.numel() for p in model.parameters()) > BIG_PARAMS
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return 1 if big and not has_bn else 2


def _smoke_shape(spec: models.ModelSpec) -> tuple[int, ...]:
    c, h, w = spec.input_shape
    if spec.task in ("detection", "segmentation") and min(h, w) > SMOKE_SIDE:
        return (c, SMOKE_SIDE, SMOKE_SIDE)
    return tuple(spec.input_shape)


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_forward_and_train_step(name: str) -> None:
    spec = models.get_spec(name)
    model = models.create(name)
    n = _smoke_batch(model)
    batch = spec.make_batch(n, _smoke_shape(spec))
    model.eval()
    with torch.no_grad():
        out = spec.forward(model, batch)
    outs = _tensors(out)
    assert outs, f"{name}: forward returned no tensors"
    assert all(torch.isfinite(t).all() for t in outs if t.is_floating_point()), f"{name}: non-finite output"
    if spec.task == "classification":
        assert out.shape == (n, spec.num_classes)
    model.train()
    loss = spec.loss(model, batch)
    assert loss.dim() == 0 and torch.isfinite(loss), f"{name}: loss {loss}"
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads, f"{name}: no parameter received a gradient"
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ALL)
def test_declared_hot_paths_are_the_real_ones(name: str) -> None:
    spec = models.get_spec(name)
    model = spec.builder()
    present = {h for h in HOT_PATHS if _contains(model, h)}
    assert present == set(spec.hot_paths), f"{name}: declares {spec.hot_paths}, contains {sorted(present)}"


def test_duplicate_registration_raises() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model(family="resnet", name="resnet50")(lambda: nn.Identity())


def test_unknown_model_names_the_closest() -> None:
    with pytest.raises(models.UnknownModelError, match="did you mean 'resnet50'"):
        models.create("resnet05")


def test_unknown_hot_path_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown hot paths"):
        register_model(family="x", hot_paths=("flash",), name="_never")(lambda: nn.Identity())
    unregister_model("_never")


def test_every_model_declares_the_tensors_the_accuracy_gate_compares() -> None:
    from models.registry import logits_outputs

    for name in ALL:
        spec = models.get_spec(name)
        assert callable(spec.outputs_fn), name
        assert (spec.outputs_fn is logits_outputs) == (spec.task == "classification"), name
    with pytest.raises(ValueError, match="must declare outputs_fn"):
        register_model(family="fake", task="segmentation")(lambda: nn.Identity())


# one model per declared outputs function (the other variants share it)
@pytest.mark.parametrize("name", ["fasterrcnn_resnet50_fpn", "yolov5n", "simclr_resnet50", "mae_vit_b_16", "unet",
                                  "deeplabv3plus_resnet50"])
def test_declared_outputs_are_fixed_shape_deterministic_and_finite(name: str) -> None:
    """Same weights and batch -> the same named float tensors, twice (seeded masks and views, no data-dependent
    selection); the compared set does not depend on the values (it holds for every precision and device)."""
    spec = models.get_spec(name)
    torch.manual_seed(0)
    small = {"mae_vit_b_16": dict(dim=32, depth=1, num_heads=4, decoder_dim=32, decoder_depth=1, decoder_heads=4)}
    model = spec.builder(**small.get(name, {})).eval()  # MAE-B's init alone costs ~8 s here; its outputs_fn is shared
    batch = spec.make_batch(2, (3, 64, 64))
    with torch.no_grad():
        a, b = spec.outputs(model, batch), spec.outputs(model, batch)
    assert a and set(a) == set(b)
    for k, t in a.items():
        assert isinstance(t, torch.Tensor) and t.is_floating_point() and torch.isfinite(t).all(), (name, k)
        assert torch.equal(t, b[k]), (name, k)
