"""Swin and ViT semantics checked against independent constructions (not against torchvision).

* the relative position index from token coordinates, pair by pair;
* the shifted-window mask from geometry: a token may attend to another of its (shifted) window iff the two are
  closer than a window in the *original* image along both axes (i.e. the pair does not straddle the cyclic wrap);
* the attention core ``window_attention_eager`` against a per-window loop, and the kernel contract around it;
* a whole shifted-window attention module against dense attention over the unrolled image;
* ViT: images of a batch stay independent.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import models
from models.swin import (
    MASK_FILL,
    ShiftedWindowAttention,
    SwinTransformer,
    relative_position_index,
    shifted_window_mask,
    window_attention_eager,
)


def _brute_force_index(window: tuple[int, int], table_window: tuple[int, int]) -> torch.Tensor:
    (wh, ww), (th, tw) = window, table_window
    tokens = list(itertools.product(range(wh), range(ww)))  # row-major (y, x)
    idx = [(yi - yj + th - 1) * (2 * tw - 1) + (xi - xj + tw - 1) for (yi, xi) in tokens for (yj, xj) in tokens]
    return torch.tensor(idx)


@pytest.mark.parametrize("window,table", [((7, 7), (7, 7)), ((3, 5), (3, 5)), ((4, 4), (7, 7))])
def test_relative_position_index_from_coordinates(window: tuple[int, int], table: tuple[int, int]) -> None:
    idx = relative_position_index(window, table)
    assert torch.equal(idx, _brute_force_index(window, table))
    assert idx.min() >= 0 and idx.max() < (2 * table[0] - 1) * (2 * table[1] - 1)


def test_swin_modules_expose_table_and_index() -> None:
    model = models.create("swin_t")
    attns = [m for m in model.modules() if getattr(m, "hot_path", None) == "window_attention"]
    assert len(attns) == 12  # depths (2, 2, 6, 2)
    for m in attns:
        assert m.attn_fn is window_attention_eager
        assert m.relative_position_bias_table.shape == (13 * 13, m.num_heads)
        assert "relative_position_index" in dict(m.named_buffers())
        assert torch.equal(m.relative_position_index, _brute_force_index((7, 7), (7, 7)))
    assert [m.shift_size for m in attns[:2]] == [(0, 0), (3, 3)]


def _geometric_mask(h: int, w: int, window: tuple[int, int], shift: tuple[int, int]) -> torch.Tensor:
    """Independent construction: original coordinates of each shifted-frame token, then a distance test."""
    (wh, ww), (sh, sw) = window, shift
    blocks = []
    for wy in range(h // wh):
        for wx in range(w // ww):
            # Token (r, c) of the rolled map came from ((r + sh) mod h, (c + sw) mod w) of the original map.
            ys = torch.tensor([(wy * wh + r + sh) % h for r in range(wh) for _ in range(ww)])
            xs = torch.tensor([(wx * ww + c + sw) % w for _ in range(wh) for c in range(ww)])
            near = ((ys[:, None] - ys[None, :]).abs() < wh) & ((xs[:, None] - xs[None, :]).abs() < ww)
            blocks.append(torch.where(near, 0.0, MASK_FILL))
    return torch.stack(blocks)


@pytest.mark.parametrize("h,w,shift", [(14, 14, (3, 3)), (21, 14, (3, 3)), (28, 21, (3, 3)), (21, 14, (3, 0)),
                                       (14, 7, (3, 0))])
def test_shifted_window_mask_matches_geometry(h: int, w: int, shift: tuple[int, int]) -> None:
    mask = shifted_window_mask(h, w, (7, 7), shift)
    assert mask.dtype == torch.float32 and mask.shape == ((h // 7) * (w // 7), 49, 49)
    expected = _geometric_mask(h, w, (7, 7), shift)
    assert torch.equal(mask, expected)
    assert (mask == MASK_FILL).any() or shift == (0, 0)


def _loop_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                    mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    out = torch.empty_like(q)
    for b in range(q.shape[0]):
        logits = scale * torch.einsum("hnd,hmd->hnm", q[b], k[b]) + bias
        if mask is not None:
            logits = logits + mask[b % mask.shape[0]]
        out[b] = torch.einsum("hnm,hmd->hnd", logits.softmax(-1), v[b])
    return out


@pytest.mark.parametrize("with_mask", [True, False])
def test_window_attention_eager_matches_per_window_loop(with_mask: bool) -> None:
    batch, nw, heads, n, hd = 2, 4, 3, 9, 5
    q, k, v = (torch.randn(batch * nw, heads, n, hd) for _ in range(3))
    bias = torch.randn(heads, n, n)
    mask = torch.where(torch.rand(nw, n, n) < 0.3, MASK_FILL, 0.0) if with_mask else None
    out = window_attention_eager(q, k, v, bias, mask, hd**-0.5)
    assert out.shape == (batch * nw, heads, n, hd)
    torch.testing.assert_close(out, _loop_attention(q, k, v, bias, mask, hd**-0.5))


def _tiny_swin(**kwargs: object) -> SwinTransformer:
    return SwinTransformer(embed_dim=8, depths=(2, 2), num_heads=(2, 4), num_classes=5, **kwargs).eval()


def test_attn_fn_contract_and_switch() -> None:
    """Shapes/dtypes the kernel switch receives, and that ``forward`` really uses ``attn_fn``."""
    model = _tiny_swin()
    x = torch.randn(2, 3, 56, 56)  # stage 1: 14x14 (4 windows, shifted); stage 2: 7x7 (one window, no shift)
    with torch.no_grad():
        reference = model(x)
    calls = []

    def recording(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None,
                  scale: float) -> torch.Tensor:
        calls.append((q.shape, k.shape, v.shape, bias.shape, None if mask is None else (mask.shape, mask.dtype),
                      scale))
        return window_attention_eager(q, k, v, bias, mask, scale)

    attns = [m for m in model.modules() if getattr(m, "hot_path", None) == "window_attention"]
    for m in attns:
        m.attn_fn = recording
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference, rtol=0, atol=0)
    assert calls == [
        ((8, 2, 49, 4),) * 3 + ((2, 49, 49), None, 0.5),
        ((8, 2, 49, 4),) * 3 + ((2, 49, 49), ((4, 49, 49), torch.float32), 0.5),
        ((2, 4, 49, 4),) * 3 + ((4, 49, 49), None, 0.5),
        ((2, 4, 49, 4),) * 3 + ((4, 49, 49), None, 0.5),  # 7x7 map: the shift is switched off
    ]
    for m in attns:
        m.attn_fn = lambda q, k, v, bias, mask, scale: torch.zeros_like(q)
    with torch.no_grad():
        assert not torch.allclose(model(x), reference)


def _dense_reference(attn: ShiftedWindowAttention, x: torch.Tensor, window: tuple[int, int],
                     shift: tuple[int, int]) -> torch.Tensor:
    """Shifted-window attention without roll/partition/mask: dense attention over all tokens of the map, where
    token i attends to j iff both fall in the same window of the shifted grid and are closer than a window in the
    original image; the bias is read from the table at their original relative position."""
    b, h, w, c = x.shape
    (wh, ww), (sh, sw) = window, shift
    th, tw = attn.window_size
    heads, hd = attn.num_heads, c // attn.num_heads
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    win = ((ys - sh) % h) // wh * (w // ww) + ((xs - sw) % w) // ww  # window id in the shifted grid
    dy, dx = ys[:, None] - ys[None, :], xs[:, None] - xs[None, :]
    allowed = (win[:, None] == win[None, :]) & (dy.abs() < wh) & (dx.abs() < ww)
    table_idx = ((dy + th - 1) * (2 * tw - 1) + dx + tw - 1).clamp(0, (2 * th - 1) * (2 * tw - 1) - 1)
    bias = attn.relative_position_bias_table[table_idx].permute(2, 0, 1)  # [heads, HW, HW]
    qkv = attn.qkv(x.reshape(b, h * w, c)).reshape(b, h * w, 3, heads, hd).permute(2, 0, 3, 1, 4)
    logits = qkv[0] @ qkv[1].transpose(-2, -1) * attn.scale + bias
    o = logits.masked_fill(~allowed, float("-inf")).softmax(-1) @ qkv[2]
    return attn.proj(o.transpose(1, 2).reshape(b, h, w, c))


@pytest.mark.parametrize("h,w,shift", [(14, 14, (3, 3)), (21, 14, (3, 3)), (14, 14, (0, 0))])
def test_shifted_window_attention_equals_dense_construction(h: int, w: int, shift: tuple[int, int]) -> None:
    attn = ShiftedWindowAttention(dim=8, num_heads=2, window_size=(7, 7), shift_size=shift).eval()
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()  # make a wrong bias index visible
        x = torch.randn(2, h, w, 8)
        torch.testing.assert_close(attn(x), _dense_reference(attn, x, (7, 7), shift), rtol=1e-5, atol=1e-5)


def test_shrink_policy() -> None:
    """``shrink`` equals ``pad`` when every map is at least a window; below that it attends over the real tokens
    only (one 4x4 window, no shift, bias from the table's centre) while ``pad`` pads to 7x7 as torchvision."""
    pad, shrink = _tiny_swin(), _tiny_swin(window_policy="shrink")
    shrink.load_state_dict(pad.state_dict())
    with torch.no_grad():
        x = torch.randn(2, 3, 56, 56)
        torch.testing.assert_close(shrink(x), pad(x), rtol=0, atol=0)
        small = torch.randn(2, 3, 28, 28)  # stage 2 is 4x4
        assert not torch.allclose(shrink(small), pad(small))
        attn = ShiftedWindowAttention(dim=8, num_heads=2, shift_size=(3, 3), window_policy="shrink").eval()
        attn.relative_position_bias_table.normal_()
        feat = torch.randn(2, 4, 4, 8)
        torch.testing.assert_close(attn(feat), _dense_reference(attn, feat, (4, 4), (0, 0)), rtol=1e-5, atol=1e-5)


def test_vit_keeps_images_of_a_batch_independent() -> None:
    model = models.create("vit_s_16", image_size=32).eval()
    with torch.no_grad():
        model.head.weight.normal_()  # torchvision's init zeroes the head; outputs would be constant
        x = torch.randn(3, 3, 32, 32)
        y = model(x)
        x2 = x.clone()
        x2[1] = torch.randn(3, 32, 32)
        y2 = model(x2)
    torch.testing.assert_close(y2[0], y[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(y2[2], y[2], rtol=1e-6, atol=1e-6)
    assert (y2[1] - y[1]).abs().max() > 1e-2
