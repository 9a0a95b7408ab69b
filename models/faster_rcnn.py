"""Faster R-CNN with a ResNet-50 + FPN backbone (Ren et al. 2015; Lin et al. 2017), torchvision's layout.

Pipeline for images ``[B, 3, H, W]`` (values in [0, 1]-ish; any float works):

1. normalise with ImageNet mean/std and zero-pad bottom/right to a multiple of 32 (no resizing: the benchmark feeds
   the size it wants to measure; torchvision would first resize the short side to 800);
2. backbone: ResNet-50 stages C2..C5 -> FPN -> ``{"0": P2, "1": P3, "2": P4, "3": P5, "pool": P6}``, 256 channels;
3. RPN: 3 anchors (ratios 0.5/1/2) per location and level (sizes 32..512), objectness + box deltas, decoding,
   per-level top-k, clipping, NMS per level (``torchvision.ops.batched_nms``);
4. ROI heads: multi-scale ROI Align (7x7, sampling ratio 2, aligned=False; FPN level assignment), two-FC box head
   (1024-d), class scores + class-specific box deltas, score threshold, per-class NMS, top-100 detections.

Module and parameter names equal torchvision's ``fasterrcnn_resnet50_fpn``, so its ``state_dict`` loads directly
(``strict=True``). Parameter count: 41,808,406, equal to ``fasterrcnn_resnet50_fpn(weights=None,
weights_backbone=None)``, which (like us) uses plain ``BatchNorm2d``. The pretrained torchvision model uses
``FrozenBatchNorm2d``, whose affine weight/bias are *buffers*, so it reports 53,120 fewer parameters (41,755,286);
the tensors are the same.

Training (``model.train()``, ``model(images, targets)``) returns torchvision's four losses: ``loss_objectness``,
``loss_rpn_box_reg``, ``loss_classifier``, ``loss_box_reg``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.ops as tvo

from .registry import Batch, image_batch, register_model
from .resnet import Bottleneck, ResNet

__all__ = ["FasterRCNN", "MultiScaleRoIAlign", "detection_batch_fn", "detection_loss", "detection_outputs",
           "fixed_proposals"]

Targets = list[dict[str, torch.Tensor]]
_BBOX_CLIP = math.log(1000.0 / 16)  # largest dw/dh before exp(): boxes at most 1000/16 x the anchor


# --- box coding -----------------------------------------------------------------------------------------------------


def encode_boxes(gt: torch.Tensor, ref: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """Regression targets ``[K, 4]`` that map reference boxes ``ref`` to ``gt`` (both ``[K, 4]`` xyxy).

    ``dx = wx (gx - rx) / rw``, ``dy = wy (gy - ry) / rh``, ``dw = ww log(gw / rw)``, ``dh = wh log(gh / rh)``
    with centres ``(x, y)`` and sizes ``(w, h)``.
    """
    wx, wy, ww, wh = weights
    rw, rh = ref[:, 2] - ref[:, 0], ref[:, 3] - ref[:, 1]
    rx, ry = ref[:, 0] + 0.5 * rw, ref[:, 1] + 0.5 * rh
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    gx, gy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    return torch.stack([wx * (gx - rx) / rw, wy * (gy - ry) / rh, ww * torch.log(gw / rw), wh * torch.log(gh / rh)],
                       dim=1)


def decode_boxes(deltas: torch.Tensor, ref: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """Inverse of :func:`encode_boxes`: deltas ``[K, 4*M]`` on boxes ``ref [K, 4]`` -> boxes ``[K, M, 4]`` xyxy.

    ``dw``/``dh`` are clamped at ``log(1000/16)`` so a wild prediction cannot overflow ``exp``.
    """
    ref = ref.to(deltas.dtype)
    wx, wy, ww, wh = weights
    rw, rh = ref[:, 2:3] - ref[:, 0:1], ref[:, 3:4] - ref[:, 1:2]
    rx, ry = ref[:, 0:1] + 0.5 * rw, ref[:, 1:2] + 0.5 * rh
    dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
    dw = (deltas[:, 2::4] / ww).clamp(max=_BBOX_CLIP)
    dh = (deltas[:, 3::4] / wh).clamp(max=_BBOX_CLIP)
    cx, cy = dx * rw + rx, dy * rh + ry
    half_w, half_h = 0.5 * (torch.exp(dw) * rw), 0.5 * (torch.exp(dh) * rh)
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=2)


# --- matching and sampling ------------------------------------------------------------------------------------------

BELOW, BETWEEN = -1, -2  # match codes: background, ignored


def match_boxes(iou: torch.Tensor, high: float, low: float, allow_low_quality: bool) -> torch.Tensor:
    """For each prediction (column of ``iou [G, P]``) the index of its best gt, or ``BELOW``/``BETWEEN``.

    With ``allow_low_quality`` every gt also keeps the predictions that overlap it best (even under ``low``), so no
    gt is left without a positive (RPN anchors; Ren et al. 2015, sec. 3.1.2).
    """
    best_iou, matches = iou.max(dim=0)
    original = matches.clone()
    matches[best_iou < low] = BELOW
    matches[(best_iou >= low) & (best_iou < high)] = BETWEEN
    if allow_low_quality:
        best_per_gt = iou.max(dim=1).values
        preds = torch.where(iou == best_per_gt[:, None])[1]
        matches[preds] = original[preds]
    return matches


def sample_labels(labels: torch.Tensor, batch: int, pos_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Random positives (label >= 1, at most ``batch * pos_fraction``) and negatives (label 0) filling ``batch``."""
    pos = torch.where(labels >= 1)[0]
    neg = torch.where(labels == 0)[0]
    n_pos = min(pos.numel(), int(batch * pos_fraction))
    n_neg = min(neg.numel(), batch - n_pos)
    pos = pos[torch.randperm(pos.numel(), device=pos.device)[:n_pos]]
    neg = neg[torch.randperm(neg.numel(), device=neg.device)[:n_neg]]
    return pos, neg


# --- backbone -------------------------------------------------------------------------------------------------------


class FeaturePyramidNetwork(nn.Module):
    """FPN: lateral 1x1 convs, nearest top-down upsampling and sum, 3x3 output convs, plus max-pooled P6.

    Inputs C2..C5 ``[B, Ci, H/2^(i), W/2^(i)]``; outputs P2..P6 with ``out_channels``. Each conv sits alone in a
    ``Sequential`` so parameter names (``inner_blocks.0.0.weight``) match torchvision's.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256) -> None:
        super().__init__()
        self.inner_blocks = nn.ModuleList(nn.Sequential(nn.Conv2d(c, out_channels, 1)) for c in in_channels)
        self.layer_blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, padding=1)) for _ in in_channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        last = self.inner_blocks[-1](feats[-1])
        outs = [self.layer_blocks[-1](last)]
        for i in range(len(feats) - 2, -1, -1):
            lateral = self.inner_blocks[i](feats[i])
            last = lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            outs.insert(0, self.layer_blocks[i](last))
        # P6 = stride-2 subsampling of P5 (kernel 1): the RPN's 512-px anchors live there.
        outs.append(F.max_pool2d(outs[-1], 1, 2, 0))
        return outs


class BackboneWithFPN(nn.Module):
    """ResNet-50 ``body`` + ``fpn``: ``[B, 3, H, W]`` -> ``{"0".."3", "pool"}`` maps of 256 channels."""

    out_channels = 256

    def __init__(self) -> None:
        super().__init__()
        self.body = ResNet(Bottleneck, (3, 4, 6, 3), num_classes=0)
        self.fpn = FeaturePyramidNetwork([256, 512, 1024, 2048], self.out_channels)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        feats = []
        for stage in (b.layer1, b.layer2, b.layer3, b.layer4):
            x = stage(x)
            feats.append(x)
        return dict(zip(["0", "1", "2", "3", "pool"], self.fpn(feats)))


# --- RPN ------------------------------------------------------------------------------------------------------------


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then per-anchor objectness ``[B, A, H, W]`` and deltas ``[B, 4A, H, W]``."""

    def __init__(self, channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)))
        self.cls_logits = nn.Conv2d(channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(channels, 4 * num_anchors, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        hidden = [self.conv(f) for f in feats]
        return [self.cls_logits(h) for h in hidden], [self.bbox_pred(h) for h in hidden]


def cell_anchors(size: float, ratios: Sequence[float], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Anchors ``[A, 4]`` centred on 0 with area ``size^2`` and ``h / w = ratio``, rounded to integers."""
    r = torch.as_tensor(ratios, dtype=dtype, device=device)
    h_ratio = torch.sqrt(r)
    ws, hs = size / h_ratio, size * h_ratio
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def grid_anchors(base: torch.Tensor, grid: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """``[H*W*A, 4]`` anchors, location-major (row, column), anchor-minor: the RPN head's flattening order."""
    ys = torch.arange(grid[0], dtype=torch.int32, device=base.device) * stride[0]
    xs = torch.arange(grid[1], dtype=torch.int32, device=base.device) * stride[1]
    sy, sx = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([sx.reshape(-1), sy.reshape(-1)] * 2, dim=1)
    return (shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4)


def flatten_head(maps: torch.Tensor, per_anchor: int) -> torch.Tensor:
    """``[B, A*C, H, W] -> [B, H*W*A, C]`` in the anchors' order."""
    b, _, h, w = maps.shape
    return maps.view(b, -1, per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, per_anchor)


class RegionProposalNetwork(nn.Module):
    """Anchors, RPN head, proposal selection and (in training) the objectness and box losses."""

    def __init__(self, channels: int = 256, sizes: Sequence[int] = (32, 64, 128, 256, 512),
                 ratios: Sequence[float] = (0.5, 1.0, 2.0), pre_nms_top_n: tuple[int, int] = (2000, 1000),
                 post_nms_top_n: tuple[int, int] = (2000, 1000), nms_thresh: float = 0.7,
                 fg_iou: float = 0.7, bg_iou: float = 0.3, batch_per_image: int = 256,
                 pos_fraction: float = 0.5, min_size: float = 1e-3) -> None:
        super().__init__()
        self.sizes, self.ratios = tuple(sizes), tuple(ratios)
        self.head = RPNHead(channels, len(self.ratios))
        self.pre_nms_top_n, self.post_nms_top_n = pre_nms_top_n, post_nms_top_n  # (train, test)
        self.nms_thresh, self.fg_iou, self.bg_iou, self.min_size = nms_thresh, fg_iou, bg_iou, min_size
        self.batch_per_image, self.pos_fraction = batch_per_image, pos_fraction

    def anchors(self, feats: Sequence[torch.Tensor], padded: Sequence[int]) -> torch.Tensor:
        """``[sum_l H_l*W_l*A, 4]`` fp32 image-pixel anchors; stride = padded size // map size (as torchvision)."""
        out = []
        for size, f in zip(self.sizes, feats):
            grid = f.shape[-2:]
            stride = (padded[0] // grid[0], padded[1] // grid[1])
            out.append(grid_anchors(cell_anchors(size, self.ratios, torch.float32, f.device), grid, stride))
        return torch.cat(out)

    def forward(self, feats: Sequence[torch.Tensor], padded: Sequence[int], image_size: tuple[int, int],
                targets: Targets | None = None) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        logits, deltas = self.head(feats)
        per_level = [lg.shape[1] * lg.shape[2] * lg.shape[3] for lg in logits]
        # box arithmetic in fp32 whatever the feature dtype: bf16 cannot hold pixel coordinates (nor does NMS take it)
        obj = torch.cat([flatten_head(lg, 1) for lg in logits], dim=1).squeeze(-1).float()  # [B, K]
        deltas = torch.cat([flatten_head(d, 4) for d in deltas], dim=1).float()  # [B, K, 4]
        anchors = self.anchors(feats, padded)
        b = obj.shape[0]
        proposals = decode_boxes(deltas.detach().reshape(-1, 4), anchors.repeat(b, 1), (1.0, 1.0, 1.0, 1.0))
        proposals = self.select(proposals.view(b, -1, 4), obj.detach(), per_level, image_size)
        losses: dict[str, torch.Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("training needs targets")
            losses = self.loss(obj, deltas, anchors, targets)
        return proposals, losses

    def select(self, proposals: torch.Tensor, obj: torch.Tensor, per_level: Sequence[int],
               image_size: tuple[int, int]) -> list[torch.Tensor]:
        """Per image: top-k per level, sigmoid, clip, drop tiny boxes, NMS per level, keep ``post_nms_top_n``."""
        mode = 0 if self.training else 1
        idx, lvl, start = [], [], 0
        for i, n in enumerate(per_level):
            top = obj[:, start:start + n].topk(min(self.pre_nms_top_n[mode], n), dim=1).indices
            idx.append(top + start)
            lvl.append(torch.full((top.shape[1],), i, dtype=torch.int64, device=obj.device))
            start += n
        idx = torch.cat(idx, dim=1)
        levels = torch.cat(lvl)
        rows = torch.arange(obj.shape[0], device=obj.device)[:, None]
        scores, boxes = torch.sigmoid(obj[rows, idx]), proposals[rows, idx]
        out = []
        for bx, sc in zip(boxes, scores):
            bx = tvo.clip_boxes_to_image(bx, image_size)
            keep = tvo.remove_small_boxes(bx, self.min_size)
            bx, sc, lv = bx[keep], sc[keep], levels[keep]
            keep = tvo.batched_nms(bx, sc, lv, self.nms_thresh)[: self.post_nms_top_n[mode]]
            out.append(bx[keep])
        return out

    def loss(self, obj: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor,
             targets: Targets) -> dict[str, torch.Tensor]:
        """BCE on 256 sampled anchors per image; smooth-L1 (beta 1/9) on the positives, over all samples."""
        labels, reg_targets = [], []
        for t in targets:
            gt = t["boxes"].to(anchors.dtype)
            m = match_boxes(tvo.box_iou(gt, anchors), self.fg_iou, self.bg_iou, allow_low_quality=True)
            lab = (m >= 0).to(obj.dtype)
            lab[m == BETWEEN] = -1.0
            labels.append(lab)
            reg_targets.append(encode_boxes(gt[m.clamp(min=0)], anchors, (1.0, 1.0, 1.0, 1.0)))
        pos, neg = [], []
        k = anchors.shape[0]
        for i, lab in enumerate(labels):
            p, n = sample_labels(lab, self.batch_per_image, self.pos_fraction)
            pos.append(p + i * k)
            neg.append(n + i * k)
        pos, neg = torch.cat(pos), torch.cat(neg)
        sampled = torch.cat([pos, neg])
        labels_all, targets_all = torch.cat(labels), torch.cat(reg_targets)
        box = F.smooth_l1_loss(deltas.reshape(-1, 4)[pos], targets_all[pos], beta=1 / 9, reduction="sum")
        return {"loss_objectness": F.binary_cross_entropy_with_logits(obj.reshape(-1)[sampled], labels_all[sampled]),
                "loss_rpn_box_reg": box / sampled.numel()}


# --- ROI heads ------------------------------------------------------------------------------------------------------

MultilevelFn = Callable[[list[torch.Tensor], torch.Tensor, list[float], torch.Tensor, tuple[int, int], int, bool],
                        torch.Tensor]


class MultiScaleRoIAlign(nn.Module):
    """ROI Align over FPN levels P2..P5 with the FPN level rule; ``[K, C, oh, ow]`` per box.

    Kernel contract (the Triton ROI Align kernel swaps these attributes; nothing else changes):

    * ``roi_align_fn``: called per level as ``roi_align(input, boxes, output_size, spatial_scale, sampling_ratio,
      aligned)`` with ``boxes`` a ``Tensor[K, 5]`` (batch index, x1, y1, x2, y2); default ``torchvision.ops.roi_align``.
    * ``multilevel_fn``: if not ``None``, called once instead of the per-level loop as ``multilevel_fn(features,
      rois [K, 5], spatial_scales, levels [K] int64 (index into features), output_size, sampling_ratio, aligned)``.

    Level of a box of area ``wh``: ``k = floor(4 + log2(sqrt(wh) / 224) + 1e-6)`` clamped to [2, 5] (Lin et al. 2017,
    eq. 1). Level scales are inferred from feature vs image size and rounded to a power of 2 (as torchvision).
    """

    hot_path = "roi_align"

    def __init__(self, featmap_names: Sequence[str] = ("0", "1", "2", "3"), output_size: int = 7,
                 sampling_ratio: int = 2, aligned: bool = False, canonical_size: int = 224,
                 canonical_level: int = 4) -> None:
        super().__init__()
        self.featmap_names = tuple(featmap_names)
        self.output_size = (output_size, output_size)
        self.sampling_ratio, self.aligned = sampling_ratio, aligned
        self.canonical_size, self.canonical_level = canonical_size, canonical_level
        self.roi_align_fn: Callable[..., torch.Tensor] = tvo.roi_align
        self.multilevel_fn: MultilevelFn | None = None

    @staticmethod
    def infer_scales(feats: Sequence[torch.Tensor], image_size: Sequence[int]) -> list[float]:
        scales = []
        for f in feats:
            approx = float(f.shape[-2]) / float(image_size[0])
            scales.append(2.0 ** round(math.log2(approx)))
        return scales

    def levels(self, boxes: torch.Tensor, scales: Sequence[float]) -> torch.Tensor:
        """Index into the pooled levels ``[K]`` int64 for boxes ``[K, 4]``."""
        k_min, k_max = -math.log2(scales[0]), -math.log2(scales[-1])
        s = torch.sqrt(tvo.box_area(boxes))
        k = torch.floor(self.canonical_level + torch.log2(s / self.canonical_size) + torch.tensor(1e-6, dtype=s.dtype))
        return (k.clamp(min=k_min, max=k_max).to(torch.int64) - int(k_min)).to(torch.int64)

    def forward(self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_size: tuple[int, int]) -> torch.Tensor:
        feats = [features[n] for n in self.featmap_names]
        scales = self.infer_scales(feats, image_size)
        ids = torch.cat([torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)])
        rois = torch.cat([ids, torch.cat(boxes)], dim=1)
        levels = self.levels(rois[:, 1:], scales)  # from the (fp32) boxes, before any cast
        if self.multilevel_fn is not None:  # takes fp32 boxes beside half-precision maps: no coordinate rounding
            return self.multilevel_fn(feats, rois, scales, levels, self.output_size, self.sampling_ratio,
                                      self.aligned)
        rois = rois.to(feats[0].dtype)  # torchvision's roi_align wants the input's dtype
        out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], *self.output_size))
        for lvl, (f, scale) in enumerate(zip(feats, scales)):
            idx = torch.where(levels == lvl)[0]
            out[idx] = self._align(f, rois[idx], scale).to(out.dtype)
        return out

    def _align(self, feat: torch.Tensor, rois: torch.Tensor, scale: float) -> torch.Tensor:
        if self.roi_align_fn is tvo.roi_align and feat.dtype == torch.bfloat16:
            # torchvision's kernels have no bf16: compute in fp32 like its autocast wrapper does.
            return self.roi_align_fn(feat.float(), rois.float(), self.output_size, scale, self.sampling_ratio,
                                     self.aligned).to(feat.dtype)
        return self.roi_align_fn(feat, rois, self.output_size, scale, self.sampling_ratio, self.aligned)


class TwoMLPHead(nn.Module):
    """``[K, C, 7, 7] -> [K, 1024]``: flatten, fc6 + ReLU, fc7 + ReLU."""

    def __init__(self, in_features: int, hidden: int = 1024) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, hidden)
        self.fc7 = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))


class FastRCNNPredictor(nn.Module):
    """Class logits ``[K, num_classes]`` (0 = background) and class-specific deltas ``[K, 4 * num_classes]``."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes)
        self.bbox_pred = nn.Linear(in_features, 4 * num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class RoIHeads(nn.Module):
    """Box branch of Faster R-CNN: sample proposals (train), pool, classify, regress, post-process (eval)."""

    def __init__(self, num_classes: int, channels: int = 256, score_thresh: float = 0.05, nms_thresh: float = 0.5,
                 detections_per_img: int = 100, fg_iou: float = 0.5, bg_iou: float = 0.5,
                 batch_per_image: int = 512, pos_fraction: float = 0.25,
                 weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)) -> None:
        super().__init__()
        self.box_roi_pool = MultiScaleRoIAlign()
        self.box_head = TwoMLPHead(channels * 7 * 7)
        self.box_predictor = FastRCNNPredictor(1024, num_classes)
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        self.fg_iou, self.bg_iou, self.weights = fg_iou, bg_iou, weights
        self.batch_per_image, self.pos_fraction = batch_per_image, pos_fraction

    def sample(self, proposals: list[torch.Tensor],
               targets: Targets) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Add the gt boxes to the proposals, match (IoU 0.5), sample 512 per image (25% positive)."""
        out_props, out_labels, out_targets = [], [], []
        for props, t in zip(proposals, targets):
            gt = t["boxes"].to(props.dtype)
            props = torch.cat([props, gt])
            m = match_boxes(tvo.box_iou(gt, props), self.fg_iou, self.bg_iou, allow_low_quality=False)
            labels = t["labels"][m.clamp(min=0)].to(torch.int64)
            labels[m == BELOW] = 0
            labels[m == BETWEEN] = -1
            pos, neg = sample_labels(labels, self.batch_per_image, self.pos_fraction)
            keep = torch.cat([pos, neg])
            out_props.append(props[keep])
            out_labels.append(labels[keep])
            out_targets.append(encode_boxes(gt[m.clamp(min=0)][keep], props[keep], self.weights))
        return out_props, torch.cat(out_labels), torch.cat(out_targets)

    def forward(self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor], image_size: tuple[int, int],
                targets: Targets | None = None) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("training needs targets")
            proposals, labels, reg_targets = self.sample(proposals, targets)
        x = self.box_head(self.box_roi_pool(features, proposals, image_size))
        logits, deltas = (t.float() for t in self.box_predictor(x))  # fp32 softmax, losses and box decoding
        if self.training:
            pos = torch.where(labels > 0)[0]
            per_class = deltas.reshape(deltas.shape[0], -1, 4)[pos, labels[pos]]
            box = F.smooth_l1_loss(per_class, reg_targets[pos], beta=1 / 9, reduction="sum") / labels.numel()
            return [], {"loss_classifier": F.cross_entropy(logits, labels), "loss_box_reg": box}
        return self.postprocess(logits, deltas, proposals, image_size), {}

    def postprocess(self, logits: torch.Tensor, deltas: torch.Tensor, proposals: list[torch.Tensor],
                    image_size: tuple[int, int]) -> list[dict[str, torch.Tensor]]:
        """Per image: softmax, decode per class, clip, drop background / low scores / tiny boxes, per-class NMS.

        Returns ``[{"boxes": [D, 4], "scores": [D] (descending), "labels": [D]}]`` with D <= ``detections_per_img``.
        """
        num_classes = logits.shape[-1]
        boxes_all = decode_boxes(deltas, torch.cat(proposals), self.weights)
        scores_all = F.softmax(logits, -1)
        out = []
        for boxes, scores in zip(boxes_all.split([len(p) for p in proposals]),
                                 scores_all.split([len(p) for p in proposals])):
            boxes = tvo.clip_boxes_to_image(boxes, image_size)
            labels = torch.arange(num_classes, device=logits.device).view(1, -1).expand_as(scores)
            boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = tvo.remove_small_boxes(boxes, 1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = tvo.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            out.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return out


# --- the detector ---------------------------------------------------------------------------------------------------


class FasterRCNN(nn.Module):
    """Faster R-CNN ResNet-50 FPN: images ``[B, 3, H, W]`` -> per-image detections (eval) or a loss dict (train).

    Args:
        num_classes: including background (COCO: 91 ids, as torchvision).
        box_score_thresh, box_nms_thresh, box_detections_per_img: inference post-processing.
        rpn_*: RPN proposal counts per image, ``(train, test)``.
        size_divisible: inputs are zero-padded (bottom/right) to a multiple of this.
    """

    def __init__(self, num_classes: int = 91, box_score_thresh: float = 0.05, box_nms_thresh: float = 0.5,
                 box_detections_per_img: int = 100, rpn_pre_nms_top_n: tuple[int, int] = (2000, 1000),
                 rpn_post_nms_top_n: tuple[int, int] = (2000, 1000), size_divisible: int = 32) -> None:
        super().__init__()
        self.backbone = BackboneWithFPN()
        self.rpn = RegionProposalNetwork(pre_nms_top_n=rpn_pre_nms_top_n, post_nms_top_n=rpn_post_nms_top_n)
        self.roi_heads = RoIHeads(num_classes, score_thresh=box_score_thresh, nms_thresh=box_nms_thresh,
                                  detections_per_img=box_detections_per_img)
        self.size_divisible = size_divisible
        self.register_buffer("image_mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise and zero-pad ``[B, 3, H, W]`` to ``[B, 3, H', W']`` with H', W' multiples of ``size_divisible``."""
        x = (images - self.image_mean.to(images.dtype)) / self.image_std.to(images.dtype)
        d = self.size_divisible
        pad_h, pad_w = (-x.shape[-2]) % d, (-x.shape[-1]) % d
        return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x

    def forward(self, images: torch.Tensor, targets: Targets | None = None) -> Any:
        """Eval: ``[{"boxes": [D, 4] xyxy pixels, "scores": [D], "labels": [D]}]``; train: dict of four losses."""
        if self.training and targets is None:
            raise ValueError("Faster R-CNN in train mode needs targets (per-image dicts with boxes and labels)")
        image_size = (int(images.shape[-2]), int(images.shape[-1]))
        x = self.preprocess(images)
        features = self.backbone(x)
        feats = list(features.values())
        proposals, rpn_losses = self.rpn(feats, x.shape[-2:], image_size, targets)
        detections, roi_losses = self.roi_heads(features, proposals, image_size, targets)
        return {**rpn_losses, **roi_losses} if self.training else detections


# --- registry glue (shared with yolov5.py) --------------------------------------------------------------------------


def detection_batch_fn(num_classes: int, first_label: int,
                       max_boxes: int = 4) -> Callable[[int, Sequence[int], torch.Generator | None], Batch]:
    """``batch_fn`` for detectors: images ``[B, C, H, W]`` in [0, 1) and per-image ``{"boxes": [K, 4], "labels": [K]}``.

    Each image gets 1..``max_boxes`` boxes (xyxy pixels, inside the image, 5-60% of each side) with labels in
    ``[first_label, num_classes)`` (Faster R-CNN reserves 0 for background; YOLO labels start at 0).
    """

    def batch_fn(batch_size: int, input_shape: Sequence[int], generator: torch.Generator | None = None) -> Batch:
        x = image_batch(batch_size, input_shape, generator).sigmoid()  # image-like range for the normalisation
        h, w = input_shape[-2], input_shape[-1]
        targets = []
        for _ in range(batch_size):
            k = int(torch.randint(1, max_boxes + 1, (1,), generator=generator))
            wh = (0.05 + 0.55 * torch.rand(k, 2, generator=generator)) * torch.tensor([w, h])
            xy = torch.rand(k, 2, generator=generator) * (torch.tensor([w, h]) - wh)
            labels = torch.randint(first_label, num_classes, (k,), generator=generator)
            targets.append({"boxes": torch.cat([xy, xy + wh], dim=1), "labels": labels})
        return Batch((x,), targets)

    return batch_fn


def detection_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Sum of a detector's loss dict (train mode, synthetic targets)."""
    losses = model(*batch.inputs, batch.target)
    return sum(losses.values())  # type: ignore[return-value]


def fixed_proposals(image_size: Sequence[int], device: torch.device | str, grid: int = 4,
                    sizes: Sequence[float] = (0.125, 0.25, 0.5)) -> torch.Tensor:
    """``[grid^2 * len(sizes), 4]`` xyxy boxes that depend on the image size only: squares of each relative size
    centred on a ``grid x grid`` lattice, clipped to the image. Small to large, so every FPN level gets boxes."""
    h, w = float(image_size[0]), float(image_size[1])
    c = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    cy, cx = torch.meshgrid(c * h, c * w, indexing="ij")
    boxes = []
    for s in sizes:
        half = 0.5 * s * min(h, w)
        boxes.append(torch.stack([cx - half, cy - half, cx + half, cy + half], dim=-1).reshape(-1, 4))
    out = torch.cat(boxes)
    out[:, 0::2] = out[:, 0::2].clamp(0, w)
    out[:, 1::2] = out[:, 1::2].clamp(0, h)
    return out.to(device)


def detection_outputs(model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    """The accuracy gate's tensors, all before a data-dependent step (top-k, NMS, sampling):

    * ``rpn_objectness [B, K]`` and ``rpn_deltas [B, K, 4]``: the RPN head on every anchor of every level;
    * ``box_logits [B*P, num_classes]`` and ``box_deltas [B*P, 4*num_classes]``: the box head on
      :func:`fixed_proposals` (P = 48 per image), i.e. ROI Align + two-FC head + predictor on boxes that do not
      depend on the network's outputs.
    """
    images = batch.inputs[0]
    image_size = (int(images.shape[-2]), int(images.shape[-1]))
    features = model.backbone(model.preprocess(images))  # type: ignore[operator]
    logits, deltas = model.rpn.head(list(features.values()))  # type: ignore[union-attr]
    props = [fixed_proposals(image_size, images.device)] * images.shape[0]
    heads = model.roi_heads  # type: ignore[union-attr]
    cls, reg = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, props, image_size)))
    return {"rpn_objectness": torch.cat([flatten_head(lg, 1) for lg in logits], dim=1).squeeze(-1),
            "rpn_deltas": torch.cat([flatten_head(d, 4) for d in deltas], dim=1), "box_logits": cls,
            "box_deltas": reg}


@register_model(family="faster_rcnn", task="detection", input_shape=(3, 800, 800), hot_paths=("roi_align",),
                torchvision="fasterrcnn_resnet50_fpn", num_classes=91, batch_fn=detection_batch_fn(91, 1),
                loss_fn=detection_loss, outputs_fn=detection_outputs,
                train_check="the train loss samples anchors and proposals with torch.randperm on the device and "
                            "trains the box head on NMS-selected proposals: not comparable across devices or "
                            "precisions (inference rows compare the RPN and box heads)")
def fasterrcnn_resnet50_fpn(**kwargs: Any) -> FasterRCNN:
    """Faster R-CNN ResNet-50 FPN (41.8 M params; 91 COCO ids)."""
    return FasterRCNN(**kwargs)
