"""YOLOv5 v7.0: sizes against the published table, head decoding, target assignment, CIoU, detections, train step."""

from __future__ import annotations

import pytest
import torch
import torchvision.ops as tvo

import models
from bench.flops import count_flops
from models.yolov5 import STRIDES, YOLOv5, bbox_ciou

# Ultralytics YOLOv5 v7.0 README table (640x640, COCO 80 classes): params (M), "FLOPs @640 (B)".
V7_TABLE = {"yolov5n": (1.9, 4.5), "yolov5s": (7.2, 16.5), "yolov5m": (21.2, 49.0), "yolov5l": (46.5, 109.1),
            "yolov5x": (86.7, 205.7)}


@pytest.mark.parametrize("name", list(V7_TABLE))
def test_params_and_gflops_match_v7_table(name):
    """Within 2% of the table. Ultralytics' "GFLOPs" are 2 x thop MACs (multiply-add = 2) of the conv layers, which
    is the convention of our ``flops`` field (torch's counter), so that is the one compared. Built on the meta device:
    counting needs shapes, not arithmetic."""
    params_m, gflops = V7_TABLE[name]
    with torch.device("meta"):
        model = models.create(name).eval()
    n = sum(p.numel() for p in model.parameters())
    assert n / 1e6 == pytest.approx(params_m, rel=0.02)
    count = count_flops(model.predict, torch.zeros(1, 3, 640, 640, device="meta"), fvcore=False)
    assert not count.unsupported
    assert count.flops / 1e9 == pytest.approx(gflops, rel=0.02)


def test_registry_entries():
    for name in V7_TABLE:
        spec = models.get_spec(name)
        assert (spec.family, spec.task, spec.input_shape, spec.hot_paths) == ("yolov5", "detection", (3, 640, 640), ())
    batch = models.get_spec("yolov5n").make_batch(2, (3, 64, 96))
    assert all(((t["labels"] >= 0) & (t["labels"] < 80)).all() for t in batch.target)


def test_decode_of_zero_logits_is_cell_centre_and_anchor():
    model = YOLOv5(0.33, 0.25)
    raw = [torch.zeros(1, 3, 640 // s, 480 // s, 85) for s in STRIDES]
    pred = model.detect.decode(raw)
    assert pred.shape == (1, 3 * sum((640 // s) * (480 // s) for s in STRIDES), 85)
    # sigmoid(0) = 0.5: xy = (2 * 0.5 - 0.5 + cell) * stride = (cell + 0.5) * stride, wh = (2 * 0.5)^2 * anchor
    p3 = pred[0, : 3 * 80 * 60].view(3, 80, 60, 85)
    assert torch.equal(p3[1, 2, 5, :2], torch.tensor([5.5 * 8, 2.5 * 8]))
    assert torch.equal(p3[:, 0, 0, 2:4], torch.tensor([[10.0, 13.0], [16.0, 30.0], [33.0, 23.0]]))
    p5 = pred[0, -3 * 20 * 15:].view(3, 20, 15, 85)
    assert torch.equal(p5[2, 19, 14, :4], torch.tensor([14.5 * 32, 19.5 * 32, 373.0, 326.0]))
    assert torch.equal(pred[..., 4:], torch.full_like(pred[..., 4:], 0.5))


def test_build_targets_uses_centre_cell_and_two_nearest_neighbours():
    model = YOLOv5(0.33, 0.25)
    # one 16x16 box centred at (19, 27) px in a 64x64 image; on P3 (stride 8) the centre is (2.375, 3.375): cell
    # (gi, gj) = (2, 3) plus the left (1, 3) and upper (2, 2) neighbours, for each of the three P3 anchors
    # (10x13, 16x30, 33x23 are all within a wh ratio of 4).
    tgt = torch.tensor([[0.0, 7.0, 19.0, 27.0, 16.0, 16.0]])
    b, a, gj, gi, tbox, tcls = model._build_targets(tgt, 0, (1, 3, 8, 8, 85))
    cells = sorted(zip(a.tolist(), gj.tolist(), gi.tolist()))
    assert cells == sorted((anc, j, i) for anc in range(3) for (i, j) in [(2, 3), (1, 3), (2, 2)])
    assert b.eq(0).all() and tcls.eq(7).all()
    # box target: centre offset from each assigned cell (in [-0.5, 1.5]) and wh in grid units
    assert torch.allclose(tbox[:, 2:], torch.full((9, 2), 2.0))
    assert ((tbox[:, :2] >= -0.5) & (tbox[:, :2] <= 1.5)).all()
    # P5 (stride 32): the smallest anchor there is 116x90 px, more than 4x the box: no match
    assert model._build_targets(tgt, 2, (1, 3, 2, 2, 85))[0].numel() == 0


def test_ciou_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    b1 = torch.cat([torch.rand(16, 2, generator=g) * 20, torch.rand(16, 2, generator=g) * 10 + 1], dim=1)
    b2 = torch.cat([torch.rand(16, 2, generator=g) * 20, torch.rand(16, 2, generator=g) * 10 + 1], dim=1)

    def xyxy(b):
        return torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], dim=1)

    torch.testing.assert_close(bbox_ciou(b1, b2), 1 - tvo.complete_box_iou_loss(xyxy(b1), xyxy(b2)),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bbox_ciou(b1, b1), torch.ones(16), rtol=0, atol=1e-5)


@torch.no_grad()
def test_eval_detections_well_formed():
    model = models.create("yolov5n", conf_thres=0.0, max_det=20).eval()
    x = models.get_spec("yolov5n").make_batch(2, (3, 96, 128)).inputs[0]
    dets = model(x)
    assert len(dets) == 2
    for d in dets:
        b, s, lab = d["boxes"], d["scores"], d["labels"]
        assert b.shape == (20, 4) and s.shape == (20,) and lab.shape == (20,)  # 756 candidates, NMS keeps >= 20
        assert torch.isfinite(b).all() and torch.isfinite(s).all()
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= 128).all() and (b[:, 3] <= 96).all()
        assert (b[:, 2:] >= b[:, :2]).all()
        assert (s[:-1] >= s[1:]).all()
        assert ((lab >= 0) & (lab < 80)).all()
    # the default threshold (0.25) keeps nothing from an untrained model: its prior is ~8 objects per 640 image
    model.conf_thres = 0.25
    assert all(len(d["boxes"]) == 0 for d in model(x))


def test_train_step_finite():
    spec = models.get_spec("yolov5n")
    model = models.create("yolov5n").train()
    batch = spec.make_batch(2, (3, 64, 96))
    losses = model(*batch.inputs, batch.target)
    assert set(losses) == {"loss_box", "loss_obj", "loss_cls"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    loss = spec.loss(model, batch)
    loss.backward()
    head = model.detect.m[0].weight.grad
    assert head is not None and torch.isfinite(head).all() and head.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    raw = model(batch.inputs[0])  # train mode without targets: the raw maps
    assert [r.shape for r in raw] == [(2, 3, 64 // s, 96 // s, 85) for s in STRIDES]


@torch.no_grad()
def test_bf16_model_decodes_in_fp32():
    model = models.create("yolov5n", conf_thres=0.0, max_det=5).to(torch.bfloat16).eval()
    x = torch.rand(1, 3, 64, 64, dtype=torch.bfloat16)
    pred = model.predict(x)
    assert pred.dtype == torch.float32 and torch.isfinite(pred).all()
    (det,) = model(x)
    assert det["boxes"].shape == (5, 4) and (det["boxes"] <= 64).all()
