"""Faster R-CNN ResNet-50 FPN against torchvision: parameters, component outputs, detections, losses, ROI pooler."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
import torchvision.ops as tvo
from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

import models
from bench.flops import count_flops
from models.faster_rcnn import FasterRCNN, MultiScaleRoIAlign

H, W = 120, 150  # not multiples of 32: exercises the zero padding (to 128 x 160)


@pytest.fixture(scope="module")
def pair() -> tuple[FasterRCNN, torch.nn.Module]:
    """Our model loaded with the weights of torchvision's (no resizing: min/max size = the input's sides)."""
    torch.manual_seed(0)
    tv = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=H, max_size=W, box_score_thresh=0.0,
        rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=150, box_batch_size_per_image=128)
    ours = models.create("fasterrcnn_resnet50_fpn", box_score_thresh=0.0, rpn_pre_nms_top_n=(2000, 300),
                         rpn_post_nms_top_n=(2000, 150))
    ours.roi_heads.batch_per_image = 128  # fewer sampled ROIs than 512: the two-FC head dominates the CPU time
    ours.load_state_dict(tv.state_dict(), strict=True)  # same names and shapes, no key mapping
    return ours.eval(), tv.eval()


def _images(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, H, W, generator=torch.Generator().manual_seed(1))


def test_parameter_count_equals_torchvision(pair):
    ours, tv = pair
    n_ours = sum(p.numel() for p in ours.parameters())
    assert n_ours == sum(p.numel() for p in tv.parameters()) == 41_808_406
    # torchvision's pretrained configuration uses FrozenBatchNorm2d, whose affine weight/bias are buffers: its
    # documented count (weights metadata, 41,755,286) is exactly our BatchNorm affine parameters fewer.
    bn_affine = sum(m.weight.numel() + m.bias.numel() for m in ours.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert bn_affine == 53_120
    assert FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["num_params"] == n_ours - bn_affine


@pytest.mark.slow
def test_flops_at_800_match_torchvision_metadata():
    """torchvision documents 134.38 G operations (multiply-add = 1) at 800x800; our ``flops`` counts multiply-add = 2.
    The count covers 1000 proposals in the box head, so it runs the model (about 10-20 s on a CPU)."""
    model = models.create("fasterrcnn_resnet50_fpn").eval()
    with torch.no_grad():
        count = count_flops(model, torch.rand(1, 3, 800, 800), fvcore=False)
    assert count.flops / 2e9 == pytest.approx(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["_ops"], rel=0.01)


@torch.no_grad()
def test_components_match_torchvision(pair):
    ours, tv = pair
    x = _images()
    padded = ours.preprocess(x)
    tv_images, _ = tv.transform(list(x))
    torch.testing.assert_close(padded, tv_images.tensors)
    feats, tv_feats = ours.backbone(padded), tv.backbone(tv_images.tensors)
    assert list(feats) == list(tv_feats) == ["0", "1", "2", "3", "pool"]
    for k in feats:
        torch.testing.assert_close(feats[k], tv_feats[k])
    logits, deltas = ours.rpn.head(list(feats.values()))
    tv_logits, tv_deltas = tv.rpn.head(list(tv_feats.values()))
    for a, b in zip(logits + deltas, tv_logits + tv_deltas):
        torch.testing.assert_close(a, b)
    pooled = torch.randn(5, 256, 7, 7)
    ours_out = ours.roi_heads.box_predictor(ours.roi_heads.box_head(pooled))
    tv_out = tv.roi_heads.box_predictor(tv.roi_heads.box_head(pooled))
    for a, b in zip(ours_out, tv_out):
        torch.testing.assert_close(a, b)


@torch.no_grad()
def test_detections_match_torchvision_and_are_well_formed(pair):
    ours, tv = pair
    x = _images()
    dets, tv_dets = ours(x), tv(list(x))
    assert len(dets) == 2
    for d, t in zip(dets, tv_dets):
        assert len(d["boxes"]) > 0  # score threshold 0: there must be detections to compare
        torch.testing.assert_close(d["boxes"], t["boxes"])
        torch.testing.assert_close(d["scores"], t["scores"])
        assert torch.equal(d["labels"], t["labels"])
    limit = 7
    ours.roi_heads.detections_per_img = limit
    try:
        dets = ours(x)
    finally:
        ours.roi_heads.detections_per_img = 100
    for d in dets:
        b, s, lab = d["boxes"], d["scores"], d["labels"]
        assert b.shape == (limit, 4) and s.shape == (limit,) and lab.shape == (limit,)
        assert torch.isfinite(b).all() and torch.isfinite(s).all()
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= W).all() and (b[:, 3] <= H).all()
        assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
        assert (s[:-1] >= s[1:]).all()
        assert ((lab >= 1) & (lab < 91)).all()


def test_train_losses_match_torchvision(pair):
    ours, tv = pair
    spec = models.get_spec("fasterrcnn_resnet50_fpn")
    batch = spec.make_batch(2, (3, H, W))
    ours.train()
    tv.train()
    try:
        # torchvision's transform draws one random number per image (to pick a training size) before anything else;
        # draw the same ones so both models sample the same anchors and proposals.
        torch.manual_seed(5)
        for _ in range(2):
            torch.empty(1).uniform_()
        losses = ours(*batch.inputs, batch.target)
        torch.manual_seed(5)
        with torch.no_grad():
            tv_losses = tv(list(batch.inputs[0]), [dict(t) for t in batch.target])
        assert set(losses) == set(tv_losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier",
                                                  "loss_box_reg"}
        for k in losses:
            torch.testing.assert_close(losses[k].detach(), tv_losses[k], rtol=1e-4, atol=1e-6)
        total = spec.loss(ours, batch)
        assert torch.isfinite(total)
        total.backward()
        grads = [p.grad for p in ours.parameters() if p.grad is not None]
        assert len(grads) == len(list(ours.parameters()))
        assert all(torch.isfinite(g).all() for g in grads)
    finally:
        ours.zero_grad(set_to_none=True)
        ours.eval()
        tv.eval()


def test_train_mode_needs_targets(pair):
    ours, _ = pair
    ours.train()
    try:
        with pytest.raises(ValueError, match="targets"):
            ours(_images(1))
    finally:
        ours.eval()


# --- the multi-scale ROI pooler (kernel contract) -------------------------------------------------------------------


def _pool_inputs() -> tuple[dict[str, torch.Tensor], list[torch.Tensor], tuple[int, int]]:
    g = torch.Generator().manual_seed(2)
    image = (256, 192)
    feats = {str(i): torch.randn(2, 3, image[0] // 2 ** (i + 2), image[1] // 2 ** (i + 2), generator=g)
             for i in range(4)}
    boxes = []
    for _ in range(2):
        xy = torch.rand(6, 2, generator=g) * 60
        wh = torch.rand(6, 2, generator=g) * 60 + 1
        boxes.append(torch.cat([xy, xy + wh], dim=1))
    boxes[0][0] = torch.tensor([0.0, 0.0, 190.0, 250.0])  # a big box: P3
    return feats, boxes, image


def test_pooler_matches_torchvision_and_level_rule():
    feats, boxes, image = _pool_inputs()
    pool = MultiScaleRoIAlign()
    assert pool.hot_path == "roi_align" and pool.roi_align_fn is tvo.roi_align and pool.multilevel_fn is None
    tv_pool = tvo.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    torch.testing.assert_close(pool(feats, boxes, image), tv_pool(feats, boxes, [image, image]))
    # FPN eq. 1: k = floor(4 + log2(sqrt(wh) / 224)), clamped to [2, 5]; index = k - 2
    sides = torch.tensor([10.0, 111.0, 112.0, 223.9, 224.0, 447.0, 448.0, 2000.0])
    square = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], dim=1)
    levels = pool.levels(square, [1 / 4, 1 / 8, 1 / 16, 1 / 32])
    assert levels.dtype == torch.int64
    assert levels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert MultiScaleRoIAlign.infer_scales(list(feats.values()), image) == [1 / 4, 1 / 8, 1 / 16, 1 / 32]


def test_pooler_roi_align_fn_and_multilevel_fn_contract():
    feats, boxes, image = _pool_inputs()
    pool = MultiScaleRoIAlign()
    expected = pool(feats, boxes, image)
    calls = []

    def recording_roi_align(inp, rois, output_size, spatial_scale, sampling_ratio, aligned):
        calls.append((inp.shape, rois.shape, output_size, spatial_scale, sampling_ratio, aligned))
        return tvo.roi_align(inp, rois, output_size, spatial_scale, sampling_ratio, aligned)

    pool.roi_align_fn = recording_roi_align
    torch.testing.assert_close(pool(feats, boxes, image), expected)
    assert len(calls) == 4  # one call per level, positional torchvision signature
    assert sum(c[1][0] for c in calls) == sum(len(b) for b in boxes)
    assert all(c[1][1] == 5 and c[2] == (7, 7) and c[4] == 2 and c[5] is False for c in calls)
    assert [c[3] for c in calls] == [1 / 4, 1 / 8, 1 / 16, 1 / 32]

    seen = {}

    def multilevel(features, rois, scales, levels, output_size, sampling_ratio, aligned):
        seen.update(n=len(features), rois=rois, scales=scales, levels=levels, out=output_size, sr=sampling_ratio,
                    aligned=aligned)
        out = features[0].new_zeros(rois.shape[0], features[0].shape[1], *output_size)
        for lvl, (f, s) in enumerate(zip(features, scales)):
            idx = torch.where(levels == lvl)[0]
            out[idx] = tvo.roi_align(f, rois[idx], output_size, s, sampling_ratio, aligned)
        return out

    pool.multilevel_fn = multilevel
    calls.clear()
    torch.testing.assert_close(pool(feats, boxes, image), expected)
    assert not calls  # the per-level loop is bypassed
    assert seen["n"] == 4 and seen["rois"].shape == (12, 5) and seen["levels"].dtype == torch.int64
    assert seen["rois"][:6, 0].eq(0).all() and seen["rois"][6:, 0].eq(1).all()
    assert seen["scales"] == [1 / 4, 1 / 8, 1 / 16, 1 / 32] and seen["out"] == (7, 7) and seen["sr"] == 2
    assert seen["aligned"] is False
    assert int(seen["levels"].max()) >= 1  # the big box is not on P2
    big = math.sqrt(190.0 * 250.0)
    assert int(seen["levels"][0]) == min(max(math.floor(4 + math.log2(big / 224) + 1e-6), 2), 5) - 2


def test_registry_entry():
    spec = models.get_spec("fasterrcnn_resnet50_fpn")
    assert (spec.family, spec.task, spec.input_shape, spec.hot_paths) == ("faster_rcnn", "detection", (3, 800, 800),
                                                                          ("roi_align",))
    batch = spec.make_batch(3, (3, 64, 80))
    assert batch.inputs[0].shape == (3, 3, 64, 80) and len(batch.target) == 3
    for t in batch.target:
        b = t["boxes"]
        assert b.ndim == 2 and b.shape[1] == 4 and len(t["labels"]) == len(b) >= 1
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= 80).all() and (b[:, 3] <= 64).all()
        assert ((t["labels"] >= 1) & (t["labels"] < 91)).all()


@torch.no_grad()
def test_bf16_model_keeps_box_math_in_fp32():
    """Features may be bf16; anchors, decoding, NMS (which has no bf16 CPU kernel) and outputs stay fp32."""
    model = models.create("fasterrcnn_resnet50_fpn", box_score_thresh=0.0, rpn_post_nms_top_n=(2000, 50))
    model = model.to(torch.bfloat16).eval()
    (det,) = model(torch.rand(1, 3, 64, 96, dtype=torch.bfloat16))
    assert det["boxes"].dtype == torch.float32 and len(det["boxes"]) > 0 and torch.isfinite(det["boxes"]).all()
    assert (det["boxes"][:, 2] <= 96).all() and (det["boxes"][:, 3] <= 64).all()
