"""Our classification models equal torchvision's: parameter counts, outputs with torchvision's weights, FLOPs.

Weights flow torchvision -> ours through each family's documented mapping (``spec.extra["from_torchvision"]``;
the identity where module names equal torchvision's). Our model is built on the meta device and receives
torchvision's tensors with ``load_state_dict(strict=True, assign=True)``, so every tensor it uses must come through
the mapping (a missed one stays on meta and the forward fails). Before copying, what torchvision initialises to
constants (BatchNorm/LayerNorm affine, BatchNorm running stats (then calibrated on a batch), ViT's zero head and
class token) and Swin's tiny relative-position tables are randomised, so a mis-mapped norm, eps or bias index
cannot hide.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torchvision

import models
from models.layers import StochasticDepth, stochastic_depth
from models.vit import vit_state_dict_from_torchvision

TV = torchvision.models

# name -> (builder kwargs for both models, input side); inputs small but large enough to exercise every code path
# (Swin at 112: shifted windows in stages 1-2, a padded 4x4 map in stage 4; at 96 also padding under the shift).
CASES: dict[str, tuple[dict[str, int], int]] = {
    "resnet18": ({}, 64),
    "resnet34": ({}, 64),
    "resnet50": ({}, 64),
    "resnet101": ({}, 64),
    "efficientnet_b0": ({}, 64),
    "efficientnet_b1": ({}, 64),
    "efficientnet_b2": ({}, 64),
    "efficientnet_b3": ({}, 64),
    "vit_b_16": ({"image_size": 32}, 32),
    "vit_l_16": ({"image_size": 32}, 32),
    "swin_t": ({}, 112),
    "swin_s": ({}, 112),
    "swin_b": ({}, 112),
}
SLOW = {"resnet101", "efficientnet_b3", "vit_l_16", "swin_s", "swin_b"}
TWINS = list(CASES)
VIT_S_TV_CONFIG = {"patch_size": 16, "num_layers": 12, "num_heads": 6, "hidden_dim": 384, "mlp_dim": 1536}


def _params(names: list[str]) -> list[pytest.param]:
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


def _torchvision_twin(name: str, **kwargs: int) -> nn.Module:
    if name == "vit_s_16":  # no torchvision builder: its generic class with ViT-S/16's config is the twin
        return TV.vision_transformer.VisionTransformer(image_size=kwargs.get("image_size", 224), **VIT_S_TV_CONFIG)
    tv_name = models.get_spec(name).torchvision
    assert tv_name is not None
    return TV.get_model(tv_name, weights=None, **kwargs)


def _num_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@torch.no_grad()
def _randomize_constants(tv: nn.Module, side: int) -> None:
    bns = [m for m in tv.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.weight.normal_(1.0, 0.1)
        m.bias.normal_(0.0, 0.1)
        m.reset_running_stats()
        m.momentum = None  # cumulative average: the running stats become this batch's statistics
    if bns:
        # Calibrate the running stats on a batch: with the init-time stats (mean 0, var 1) EfficientNet's
        # activations shrink ~50x per stage in eval mode and its logits stop depending on the input.
        tv.train()
        tv(torch.randn(4, 3, side, side))
        for m in bns:
            m.momentum = 0.1
    for m in tv.modules():
        if isinstance(m, nn.LayerNorm):
            m.weight.normal_(1.0, 0.1)
            m.bias.normal_(0.0, 0.1)
        elif isinstance(m, TV.vision_transformer.VisionTransformer):
            m.class_token.normal_()
            m.heads.head.weight.normal_(0.0, 0.05)
            m.heads.head.bias.normal_(0.0, 0.05)
        elif hasattr(m, "relative_position_bias_table"):
            m.relative_position_bias_table.normal_(0.0, 1.0)


def _ours_with_torchvision_weights(name: str, tv: nn.Module, **kwargs: int) -> nn.Module:
    spec = models.get_spec(name)
    mapping = spec.extra.get("from_torchvision", dict)
    with torch.device("meta"):
        ours = models.create(name, **kwargs)
    ours.load_state_dict(mapping(tv.state_dict()), strict=True, assign=True)
    leftovers = [k for k, t in [*ours.named_parameters(), *ours.named_buffers()] if t.is_meta]
    assert not leftovers, f"tensors not loaded from torchvision: {leftovers}"
    return ours


def _assert_same_outputs(name: str, kwargs: dict[str, int], side: int) -> None:
    tv = _torchvision_twin(name, **kwargs)
    _randomize_constants(tv, side)
    ours = _ours_with_torchvision_weights(name, tv, **kwargs)
    tv.eval()
    ours.eval()
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        expected = tv(x)
        actual = ours(x)
    scale = expected.abs().max().item()
    # The comparison must be able to fail: logits of the two images differ well above the tolerance.
    assert (expected[0] - expected[1]).abs().max().item() > 1e-2 * scale > 0
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("name", TWINS + ["vit_s_16"])
def test_parameter_count_equals_torchvision(name: str) -> None:
    """Counted on the meta device at the default input (ViT's position table depends on the image size)."""
    with torch.device("meta"):
        ours, tv = models.create(name), _torchvision_twin(name)
    assert _num_params(ours) == _num_params(tv)


def test_parameter_counts_match_published() -> None:
    """torchvision's weight metadata (``num_params``) and the known ViT-S/16 size (22,050,664: timm/DeiT-S)."""
    published = {n: TV.get_model_weights(models.get_spec(n).torchvision).DEFAULT.meta["num_params"] for n in TWINS}
    published["vit_s_16"] = 22_050_664
    for name, expected in published.items():
        with torch.device("meta"):
            assert _num_params(models.create(name)) == expected, name


@pytest.mark.parametrize("name", _params(TWINS))
def test_outputs_equal_torchvision_with_its_weights(name: str) -> None:
    kwargs, side = CASES[name]
    _assert_same_outputs(name, kwargs, side)


def test_vit_s_16_equals_torchvision_class_with_its_config() -> None:
    _assert_same_outputs("vit_s_16", {"image_size": 32}, 32)


def test_swin_t_equals_torchvision_with_padding_under_the_shift() -> None:
    """96x96: stage 1 is 24x24, zero-padded to 28x28 *before* the roll, padding tokens unmasked (torchvision)."""
    _assert_same_outputs("swin_t", {}, 96)


def test_vit_mapping_rejects_unknown_keys() -> None:
    with pytest.raises(KeyError, match="pre_logits"):
        vit_state_dict_from_torchvision({"heads.pre_logits.weight": torch.zeros(1)})


def test_registry_entries() -> None:
    expected = {
        **{f"efficientnet_b{i}": ("efficientnet", ("depthwise_conv",)) for i in range(4)},
        **{n: ("vit", ()) for n in ("vit_s_16", "vit_b_16", "vit_l_16")},
        **{n: ("swin", ("window_attention",)) for n in ("swin_t", "swin_s", "swin_b")},
    }
    for name, (family, hot_paths) in expected.items():
        spec = models.get_spec(name)
        assert (spec.family, spec.task, spec.hot_paths) == (family, "classification", hot_paths), name
        assert spec.torchvision == (None if name == "vit_s_16" else name)
        if family != "efficientnet":
            assert spec.input_shape == (3, 224, 224)


@pytest.mark.parametrize("name", [f"efficientnet_b{i}" for i in range(4)])
def test_efficientnet_input_is_torchvision_weights_crop(name: str) -> None:
    crop = TV.get_model_weights(name).DEFAULT.transforms().crop_size[0]
    assert models.get_spec(name).input_shape == (3, crop, crop)


@pytest.mark.parametrize("name,depth", [("efficientnet_b0", 1.0), ("efficientnet_b3", 1.4)])
def test_efficientnet_depthwise_convs_are_plain_conv2d(name: str, depth: float) -> None:
    """One depthwise conv per MBConv block (repeats ceil(n * depth)), each a plain ``nn.Conv2d`` (kernel switch)."""
    with torch.device("meta"):
        model = models.create(name)
    dw = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(dw) == sum(math.ceil(n * depth) for n in (1, 2, 2, 3, 3, 4, 1))
    for m in dw:
        assert type(m) is nn.Conv2d
        assert m.groups == m.in_channels == m.out_channels
        assert m.kernel_size[0] in (3, 5) and m.padding[0] == (m.kernel_size[0] - 1) // 2


# ---- stochastic depth --------------------------------------------------------------------------------------------

def _drop_probs(model: nn.Module) -> list[float]:
    return [m.p for m in model.modules() if isinstance(m, StochasticDepth) or type(m).__name__ == "StochasticDepth"]


@pytest.mark.parametrize("name,tv_default", [("efficientnet_b0", 0.2), ("efficientnet_b2", 0.2), ("swin_t", 0.2),
                                               ("swin_b", 0.5)])
def test_stochastic_depth_off_by_default_and_schedule_matches_torchvision(name: str, tv_default: float) -> None:
    """Ours defaults to 0 (benchmarks); with torchvision's training value every block gets torchvision's p."""
    with torch.device("meta"):
        assert set(_drop_probs(models.create(name))) == {0.0}
        ours = _drop_probs(models.create(name, stochastic_depth_prob=tv_default))
        theirs = _drop_probs(_torchvision_twin(name))  # torchvision's builders use their training default
    assert len(ours) == len(theirs) > 0
    assert ours == pytest.approx(theirs)
    assert max(ours) > 0.8 * tv_default


def test_stochastic_depth_drops_whole_samples_in_train_mode_only() -> None:
    x = torch.ones(2000, 3, 2, 2)
    y = stochastic_depth(x, 0.25, training=True)
    kept = y.flatten(1).amax(1) > 0
    # Each sample is all zeros or all 1 / (1 - p).
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.75))
    assert (y[~kept] == 0).all()
    assert 0.70 < kept.float().mean().item() < 0.80  # Binomial(2000, 0.75): 6 sigma is +-0.06
    assert stochastic_depth(x, 0.25, training=False) is x
    assert (stochastic_depth(x, 1.0, training=True) == 0).all()
    with pytest.raises(ValueError):
        stochastic_depth(x, 1.5, training=True)


def test_mbconv_with_drop_path_one_returns_its_input_in_train_mode() -> None:
    from models.efficientnet import MBConv

    block = MBConv(16, 16, expand=6, kernel=3, stride=1, drop_path=1.0).train()
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(block(x), x, rtol=0, atol=0)
    block.stochastic_depth.p = 0.0
    assert not torch.allclose(block(x), x)


# ---- FLOPs (bench.flops, the lead's counter) -----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_b0", "swin_t", "resnet50"])
def test_flops_equal_torchvision_twin_at_default_input(name: str) -> None:
    """torch.utils.flop_counter FLOPs (and fvcore MACs) of ours equal torchvision's twin's, batch 1."""
    flops = pytest.importorskip("bench.flops", reason="bench/flops.py (the lead's FLOP counter) is not there yet")
    x = torch.randn(1, *models.get_spec(name).input_shape)
    ours, tv = models.create(name).eval(), _torchvision_twin(name).eval()
    with torch.no_grad():
        ours_count, tv_count = flops.count_flops(ours, x), flops.count_flops(tv, x)
    assert ours_count.flops == tv_count.flops > 0
    if tv_count.macs is not None:  # fvcore present and tracing worked on torchvision's model: ours must match too
        assert ours_count.macs == tv_count.macs


@pytest.mark.slow
def test_vit_b_16_flops_count_attention() -> None:
    """2 x torchvision's published 17.56 GMACs at 224 (its own raw count misses the fused attention: ~22.5 G)."""
    flops = pytest.importorskip("bench.flops", reason="bench/flops.py (the lead's FLOP counter) is not there yet")
    with torch.no_grad():
        count = flops.count_flops(models.create("vit_b_16").eval(), torch.randn(1, 3, 224, 224)).flops
    assert count / 1e9 == pytest.approx(2 * 17.56, rel=2e-3)
