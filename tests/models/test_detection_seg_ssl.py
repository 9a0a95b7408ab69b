"""U-Net, DeepLabV3+, SimCLR and MAE: shapes, semantics (NT-Xent formula, MAE masking), eval and train steps.

Faster R-CNN and YOLOv5 have their own files (test_faster_rcnn.py, test_yolov5.py).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import models
from models.mae import MaskedAutoencoder, sincos_pos_embed_2d
from models.simclr import augment, nt_xent

SEG_SSL = {"unet": "segmentation", "unet_transposed": "segmentation", "deeplabv3plus_resnet50": "segmentation",
           "simclr_resnet50": "self-supervised", "mae_vit_b_16": "self-supervised",
           "mae_vit_l_16": "self-supervised"}


def _train_step(name: str, shape: tuple[int, int, int], batch_size: int = 2, **kwargs) -> torch.Tensor:
    """One loss + backward through the registry's ``loss_fn``; every parameter gets a finite gradient."""
    spec = models.get_spec(name)
    model = models.create(name, **kwargs).train()
    loss = spec.loss(model, spec.make_batch(batch_size, shape))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing[:5]
    return loss.detach()


def test_registry_entries():
    for name, task in SEG_SSL.items():
        spec = models.get_spec(name)
        size = 512 if task == "segmentation" else 224
        assert (spec.task, spec.input_shape, spec.hot_paths) == (task, (3, size, size), ())


# --- U-Net ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["unet", "unet_transposed"])
def test_unet_odd_size_returns_input_size(name):
    model = models.create(name).eval()
    assert model.up1.up.__class__ is (nn.Upsample if name == "unet" else nn.ConvTranspose2d)
    with torch.no_grad():
        for h, w in [(37, 45), (33, 64)]:  # 37 -> 18 -> 9 -> 4 -> 2: every level needs the padding step
            y = model(torch.randn(1, 3, h, w))
            assert y.shape == (1, 21, h, w) and torch.isfinite(y).all()


@pytest.mark.parametrize("name", ["unet", "unet_transposed"])
def test_unet_train_step(name):
    _train_step(name, (3, 32, 48))


def test_unet_widths():
    bil, tr = models.create("unet"), models.create("unet_transposed")
    # the bilinear variant halves the bottom (1024 -> 512) so [skip, up] concatenations stay 1024/512/256/128 wide
    assert bil.down4[1][0].out_channels == 512 and tr.down4[1][0].out_channels == 1024
    assert [bil.__getattr__(f"up{i}").conv[0].in_channels for i in range(1, 5)] == [1024, 512, 256, 128]
    assert [tr.__getattr__(f"up{i}").conv[0].in_channels for i in range(1, 5)] == [1024, 512, 256, 128]


# --- DeepLabV3+ -----------------------------------------------------------------------------------------------------


def test_deeplab_output_stride_16_and_decoder():
    model = models.create("deeplabv3plus_resnet50").eval()
    shapes = {}
    model.aspp.register_forward_hook(lambda m, i, o: shapes.update(aspp_in=i[0].shape, aspp_out=o.shape))
    model.low_level.register_forward_hook(lambda m, i, o: shapes.update(low_in=i[0].shape, low_out=o.shape))
    with torch.no_grad():
        y = model(torch.randn(1, 3, 64, 96))
    assert y.shape == (1, 21, 64, 96)
    assert shapes["aspp_in"] == (1, 2048, 4, 6)  # stride 16, not 32: layer4 is dilated
    assert shapes["aspp_out"] == (1, 256, 4, 6)
    assert shapes["low_in"] == (1, 256, 16, 24) and shapes["low_out"] == (1, 48, 16, 24)
    dilations = [b[0].dilation[0] for b in model.aspp.branches]
    assert dilations == [1, 6, 12, 18]
    assert model.backbone.layer4[1].conv2.dilation == (2, 2) and model.backbone.layer4[0].conv2.stride == (1, 1)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 65, 97)).shape == (1, 21, 65, 97)


def test_deeplab_train_step_batch_one():
    _train_step("deeplabv3plus_resnet50", (3, 64, 64), batch_size=1)  # image pooling without BN works at batch 1


# --- SimCLR ---------------------------------------------------------------------------------------------------------


def _nt_xent_direct(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n2 = z.shape[0]
    total = 0.0
    for i in range(n2):
        pos = (i + n2 // 2) % n2
        num = math.exp(float(z[i] @ z[pos]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(num / den)
    return torch.tensor(total / n2, dtype=torch.float64)


def test_nt_xent_equals_direct_formula():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    for t in (0.5, 0.1):
        got = nt_xent(z1, z2, t)
        torch.testing.assert_close(got.double(), _nt_xent_direct(z1, z2, t), rtol=1e-5, atol=1e-6)
    assert not torch.isclose(nt_xent(z1, z2, 0.5), nt_xent(z1, z2, 0.1))
    torch.testing.assert_close(nt_xent(z1, z2, 0.5), nt_xent(z2, z1, 0.5))  # symmetric in the two views
    torch.testing.assert_close(nt_xent(3 * z1, 0.5 * z2, 0.5), nt_xent(z1, z2, 0.5))  # cosine similarities
    # aligned views with distinct images score lower than swapped pairs
    assert nt_xent(z1, z1 + 0.01, 0.5) < nt_xent(z1, z1.roll(1, 0), 0.5)


def test_simclr_shapes_and_augment():
    model = models.create("simclr_resnet50").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model.encode(x).shape == (2, 2048)
        assert model(x).shape == (2, 128)
    g = torch.Generator().manual_seed(0)
    v1, v2 = augment(x, g), augment(x, g)
    assert v1.shape == x.shape and not torch.allclose(v1, v2) and not torch.allclose(v1, x)
    assert [m.out_features for m in model.projector if isinstance(m, nn.Linear)] == [2048, 128]


def test_simclr_train_step():
    loss = _train_step("simclr_resnet50", (3, 32, 32), batch_size=3)
    assert loss > 0


# --- MAE ------------------------------------------------------------------------------------------------------------


def _tiny_mae(**kwargs) -> MaskedAutoencoder:
    cfg = dict(image_size=32, patch_size=8, dim=32, depth=2, num_heads=4, decoder_dim=32, decoder_depth=1,
               decoder_heads=4)
    return MaskedAutoencoder(**{**cfg, **kwargs}).eval()


@torch.no_grad()
def test_mae_encoder_sees_only_visible_quarter():
    model = models.create("mae_vit_b_16").eval()
    seen = {}
    model.blocks[0].register_forward_hook(lambda m, i, o: seen.update(enc=i[0].shape))
    model.decoder_blocks[0].register_forward_hook(lambda m, i, o: seen.update(dec=i[0].shape))
    pred, mask = model(torch.randn(1, 3, 224, 224))
    assert seen["enc"] == (1, 1 + 49, 768)  # class token + 25% of 196 patches
    assert seen["dec"] == (1, 1 + 196, 512)  # the decoder gets every position back (mask tokens)
    assert pred.shape == (1, 196, 16 * 16 * 3) and mask.shape == (1, 196)
    assert int(mask.sum()) == 147 and set(mask.unique().tolist()) == {0.0, 1.0}


@torch.no_grad()
def test_mae_mask_ratio_zero_encodes_all_patches():
    model = _tiny_mae(mask_ratio=0.0)
    seen = {}
    model.blocks[0].register_forward_hook(lambda m, i, o: seen.update(enc=i[0]))
    x = torch.randn(2, 3, 32, 32)
    latent, mask, ids_restore = model.forward_encoder(x)
    assert seen["enc"].shape == (2, 17, 32) and not mask.any()
    assert torch.equal(ids_restore, torch.arange(16).expand(2, 16))
    # no shuffle: the tokens are the patch embeddings in patch order, like a plain ViT
    tokens = model.patch_embed(x).flatten(2).transpose(1, 2) + model.pos_embed[:, 1:]
    torch.testing.assert_close(seen["enc"][:, 1:], tokens)


@torch.no_grad()
def test_mae_masked_input_pixels_cannot_reach_the_prediction():
    model = _tiny_mae()
    x = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 16)
    pred, mask = model(x, noise=noise)
    assert mask.sum(1).tolist() == [12.0, 12.0]  # 75% of 16
    pixel_mask = mask.view(2, 1, 4, 1, 4, 1).expand(2, 3, 4, 8, 4, 8).reshape(2, 3, 32, 32)
    masked_changed = x + 5.0 * pixel_mask * torch.randn_like(x)
    pred2, mask2 = model(masked_changed, noise=noise)
    assert torch.equal(mask, mask2) and torch.equal(pred, pred2)  # exact: masked tokens never enter the encoder
    visible_changed = x + 5.0 * (1 - pixel_mask) * torch.randn_like(x)
    assert not torch.allclose(model(visible_changed, noise=noise)[0], pred)


@torch.no_grad()
def test_mae_loss_ignores_visible_patches():
    model = _tiny_mae()
    x = torch.randn(2, 3, 32, 32)
    pred, mask = model(x, noise=torch.rand(2, 16))
    pixel_mask = mask.view(2, 1, 4, 1, 4, 1).expand(2, 3, 4, 8, 4, 8).reshape(2, 3, 32, 32)
    loss = model.forward_loss(x, pred, mask)
    # the target changes only where patches are visible: loss unchanged
    same = model.forward_loss(x + 3.0 * (1 - pixel_mask) * torch.randn_like(x), pred, mask)
    torch.testing.assert_close(same, loss, rtol=0, atol=0)
    # ... only where masked: loss changes
    assert not torch.isclose(model.forward_loss(x + 3.0 * pixel_mask * torch.randn_like(x), pred, mask), loss)
    # formula: MSE to per-patch normalised pixels, averaged over masked patches
    target = torch.stack([x[b, :, 8 * i:8 * i + 8, 8 * j:8 * j + 8].permute(1, 2, 0).reshape(-1)
                          for b in range(2) for i in range(4) for j in range(4)]).view(2, 16, -1)
    torch.testing.assert_close(model.patchify(x), target)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    expected = (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, expected)


def test_mae_sincos_positions():
    pos = sincos_pos_embed_2d(8, 3)
    assert pos.shape == (1, 10, 8) and torch.equal(pos[0, 0], torch.zeros(8))
    # patch (row 1, col 2): first half encodes the column, second half the row; w_k = 10000^(-k/2)
    expected = torch.tensor([math.sin(2), math.sin(2e-2), math.cos(2), math.cos(2e-2),
                             math.sin(1), math.sin(1e-2), math.cos(1), math.cos(1e-2)])
    torch.testing.assert_close(pos[0, 1 + 1 * 3 + 2], expected)


@torch.no_grad()
def test_mae_other_input_sizes():
    model = _tiny_mae()
    pred, mask = model(torch.randn(2, 3, 32, 48))  # 4 x 6 patches: positions computed for that grid
    assert pred.shape == (2, 24, 8 * 8 * 3) and mask.sum(1).tolist() == [18.0, 18.0]
    torch.testing.assert_close(model._positions(model.pos_embed, 4, 6), sincos_pos_embed_2d(32, 4, 6))
    torch.testing.assert_close(model._positions(model.pos_embed, 4, 4), sincos_pos_embed_2d(32, 4))
    with pytest.raises(ValueError, match="multiples"):
        model.patchify(torch.randn(1, 3, 30, 32))


def test_mae_train_step():
    _train_step("mae_vit_b_16", (3, 64, 64), image_size=64)  # 16 patches, 4 visible
