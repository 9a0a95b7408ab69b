"""FLOP conventions against hand-derived counts, attention counted on the CPU, ResNet equal to torchvision,
and CPU peak memory that grows with the batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import models
from bench.flops import FlopCount, count_flops, count_model_flops
from bench.memory import measure_peak_memory


def _macs_or_skip(fc: FlopCount) -> int:
    """fvcore is a declared dependency, but the GPU machine may lack it: the MACs half of a test then skips."""
    if fc.macs is None:
        pytest.skip(f"fvcore MACs unavailable here: {fc.notes}")
    return fc.macs


def test_linear_flops_and_macs() -> None:
    m, k, n = 7, 33, 5
    fc = count_model_flops(nn.Linear(k, n, bias=False), (torch.randn(m, k),))
    assert fc.flops == 2 * m * k * n  # torch counter: multiply-add = 2
    assert _macs_or_skip(fc) == m * k * n  # fvcore: multiply-add = 1


def test_conv_flops_and_macs() -> None:
    b, cin, cout, h, w, k = 2, 3, 8, 11, 9, 3
    conv = nn.Conv2d(cin, cout, k, padding=1, bias=False)
    fc = count_model_flops(conv, (torch.randn(b, cin, h, w),))
    macs = b * cout * h * w * cin * k * k
    assert fc.flops == 2 * macs
    assert _macs_or_skip(fc) == macs


def test_depthwise_conv_flops() -> None:
    conv = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False)
    fc = count_model_flops(conv, (torch.randn(1, 16, 9, 9),))
    assert fc.flops == 2 * 16 * 5 * 5 * 9


def test_cpu_sdpa_is_counted() -> None:
    b, h, n, d = 2, 3, 49, 32
    q = torch.randn(b, h, n, d)
    fc = count_flops(lambda q: F.scaled_dot_product_attention(q, q, q), q)
    assert fc.flops == 4 * b * h * n * n * d
    assert not [u for u in fc.unsupported if "attention" in u]
    assert _macs_or_skip(fc) == 2 * b * h * n * n * d


def test_backward_is_counted() -> None:
    lin = nn.Linear(16, 8, bias=False)
    x = torch.randn(4, 16)
    fwd = count_flops(lambda: lin(x).sum(), fvcore=False).flops
    both = count_flops(lambda: lin(x).sum(), backward=True, fvcore=False).flops
    assert fwd == 2 * 4 * 16 * 8
    assert both == fwd * 2  # weight grad only (x needs no grad): one more matmul of the same size


@pytest.mark.parametrize("name,params", [("resnet18", 11_689_512), ("resnet50", 25_557_032)])
def test_resnet_matches_torchvision(name: str, params: int) -> None:
    ours = models.create(name)
    theirs = getattr(torchvision.models, name)()
    assert sum(p.numel() for p in ours.parameters()) == params
    assert sum(p.numel() for p in theirs.parameters()) == params
    x = torch.randn(1, 3, 224, 224)
    assert count_model_flops(ours, (x,), fvcore=False).flops == count_model_flops(theirs, (x,), fvcore=False).flops
    ours.load_state_dict(theirs.state_dict())
    ours.eval()
    theirs.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_cpu_peak_memory_grows_with_batch() -> None:
    conv = nn.Conv2d(3, 16, 3, padding=1).eval()
    peaks = []
    for b in (1, 2, 4):
        x = torch.randn(b, 3, 32, 32)
        with torch.no_grad():
            peaks.append(measure_peak_memory(lambda x=x: F.relu(conv(x)) * 2, torch.device("cpu")).peak_mb)
    one_output_mb = 16 * 32 * 32 * 4 / 2**20
    assert peaks[0] >= one_output_mb
    assert peaks[1] == pytest.approx(2 * peaks[0], rel=0.05)
    assert peaks[2] == pytest.approx(4 * peaks[0], rel=0.05)


def test_cpu_peak_memory_exact_with_frees_and_views() -> None:
    n = 1024  # float32: 4n bytes per buffer
    before = torch.zeros(n)  # exists before the step (like weights and inputs): never counted

    def step() -> torch.Tensor:
        before.add_(1)  # in place on an old storage: no new storage
        _ = before.view(32, 32)  # a view of an old storage: none either
        x = torch.ones(n)  # live 4n
        v = x.view(32, 32)  # a view: no new storage
        y = v * 2  # live 8n
        y.add_(1)  # in place: no new storage
        del x, v  # x's storage freed: live 4n
        z = y.t() + 1  # t() is a view; the sum is new: live 8n
        del y  # live 4n
        w = z.reshape(-1)  # z is transposed: clone (live 8n) + _unsafe_view, which shares the clone's storage
        del z  # live 4n
        return w.sum()  # + 4 bytes

    assert measure_peak_memory(step, torch.device("cpu")).peak_mb * 2**20 == 8 * n


def test_unknown_heavy_op_is_reported() -> None:
    # torchvision's roi_align has no formula in torch.utils.flop_counter: it must be listed, not counted as 0 silently.
    x = torch.randn(1, 2, 8, 8)
    boxes = torch.tensor([[0.0, 1.0, 1.0, 6.0, 6.0]])
    fc = count_flops(lambda x: torchvision.ops.roi_align(x, boxes, 2), x, fvcore=False)
    (gap,) = fc.unsupported  # named, counted once, and said to be left out of the total
    assert gap.startswith("torch:torchvision.roi_alignx1") and "not counted" in gap
