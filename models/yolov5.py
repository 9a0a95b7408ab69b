"""YOLOv5 v7.0 (Ultralytics): CSP-Darknet backbone with C3 blocks and SPPF, PANet neck, three-scale anchor head.

Variants n/s/m/l/x are data: one (depth, width) multiple pair each, applied to the base graph of ``yolov5l``
(blocks per C3 ``max(round(n * depth), 1)``, channels ``ceil(c * width / 8) * 8``).

* Eval: ``model(images [B, 3, H, W])`` (H, W multiples of 32, values in [0, 1]) decodes the three heads into
  ``[B, N, 5 + nc]`` (``xywh`` pixels, objectness, class probabilities), keeps ``obj * cls > conf_thres``, runs
  class-aware NMS (``torchvision.ops.nms`` with per-class offsets) and returns per-image
  ``{"boxes": [D, 4] xyxy clipped to the image, "scores": [D] descending, "labels": [D]}``, ``D <= max_det``.
* Train: ``model(images, targets)`` returns YOLOv5's losses ``{"loss_box", "loss_obj", "loss_cls"}`` (CIoU box
  loss, BCE objectness with the IoU as soft target, BCE classes; anchor matching by wh ratio < 4 plus the two
  nearest neighbouring cells). ``targets`` are per-image dicts ``{"boxes": [K, 4] xyxy pixels, "labels": [K]}``.

Published v7.0 table (640x640, 80 classes): params 1.9/7.2/21.2/46.5/86.7 M; "GFLOPs" 4.5/16.5/49.0/109.1/205.7,
where Ultralytics' GFLOPs are 2 x thop MACs (multiply-add = 2), i.e. the convention of our ``flops`` counter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.ops as tvo

from .faster_rcnn import detection_batch_fn, detection_loss
from .registry import register_model

__all__ = ["YOLOv5", "YOLO_CONFIGS", "bbox_ciou"]

# (depth multiple, width multiple) per variant, from the v7.0 model yamls.
YOLO_CONFIGS: dict[str, tuple[float, float]] = {
    "n": (0.33, 0.25),
    "s": (0.33, 0.50),
    "m": (0.67, 0.75),
    "l": (1.00, 1.00),
    "x": (1.33, 1.25),
}
# Anchor (w, h) in pixels for strides 8, 16, 32 (COCO k-means, YOLOv5 default).
ANCHORS = ((10, 13, 16, 30, 33, 23), (30, 61, 62, 45, 59, 119), (116, 90, 156, 198, 373, 326))
STRIDES = (8, 16, 32)
# Loss hyper-parameters of hyp.scratch-low.yaml; YOLOv5 rescales them by nl, nc and image size (see ``loss``).
HYP = {"box": 0.05, "cls": 0.5, "obj": 1.0, "anchor_t": 4.0}
BALANCE = (4.0, 1.0, 0.4)  # objectness weight of P3, P4, P5


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm (eps 1e-3, momentum 0.03) + SiLU; 'same' padding ``k // 2`` unless given."""

    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1, p: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2 if p is None else p, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """1x1 then 3x3 conv (same width inside C3), residual when ``shortcut``."""

    def __init__(self, c: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1, self.cv2 = Conv(c, c, 1), Conv(c, c, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C3(nn.Module):
    """CSP block: ``cv3(cat(m(cv1(x)), cv2(x)))`` with ``n`` bottlenecks at half width on one branch."""

    def __init__(self, cin: int, cout: int, n: int = 1, shortcut: bool = True) -> None:
        super().__init__()
        c = cout // 2
        self.cv1, self.cv2, self.cv3 = Conv(cin, c, 1), Conv(cin, c, 1), Conv(2 * c, cout, 1)
        self.m = nn.Sequential(*(Bottleneck(c, shortcut) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat([self.m(self.cv1(x)), self.cv2(x)], dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max-pools (= 5/9/13 windows), concatenated with the input."""

    def __init__(self, cin: int, cout: int, k: int = 5) -> None:
        super().__init__()
        c = cin // 2
        self.cv1, self.cv2 = Conv(cin, c, 1), Conv(4 * c, cout, 1)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat([x, y1, y2, self.m(y2)], dim=1))


class Detect(nn.Module):
    """Per level a 1x1 conv to ``na * (5 + nc)`` channels; ``[B, na, ny, nx, 5 + nc]`` raw maps per level."""

    def __init__(self, nc: int, channels: Sequence[int]) -> None:
        super().__init__()
        self.nc, self.no, self.na = nc, nc + 5, len(ANCHORS[0]) // 2
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in channels)
        with torch.no_grad():  # prior: ~8 objects per 640 image, 1 of nc classes (YOLOv5's bias init)
            for conv, s in zip(self.m, STRIDES):
                b = conv.bias.view(self.na, -1)
                b[:, 4] += math.log(8 / (640 / s) ** 2)
                b[:, 5:] += math.log(0.6 / (nc - 0.99))

    @staticmethod
    def anchors(level: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Anchor sizes ``[na, 2]`` of one level in grid units, fp32 (not a buffer: ``.to(bf16)`` would round them)."""
        return torch.tensor(ANCHORS[level], dtype=torch.float32, device=device).view(-1, 2) / STRIDES[level]

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for conv, f in zip(self.m, feats):
            y = conv(f)
            b, _, h, w = y.shape
            out.append(y.view(b, self.na, self.no, h, w).permute(0, 1, 3, 4, 2).contiguous())
        return out

    def decode(self, raw: Sequence[torch.Tensor]) -> torch.Tensor:
        """Raw maps -> ``[B, N, 5 + nc]`` fp32: ``xy = (2 sig - 0.5 + cell) * stride``, ``wh = (2 sig)^2 * anchor``.

        Decoded in fp32 whatever the model dtype: bf16 has 8 mantissa bits, too few for pixel coordinates.
        """
        out = []
        for i, y in enumerate(raw):
            b, _, h, w, _ = y.shape
            gy, gx = torch.meshgrid(torch.arange(h, device=y.device, dtype=torch.float32),
                                    torch.arange(w, device=y.device, dtype=torch.float32), indexing="ij")
            grid = torch.stack([gx, gy], dim=-1).view(1, 1, h, w, 2)
            anchor = (self.anchors(i, y.device) * STRIDES[i]).view(1, self.na, 1, 1, 2)
            p = y.float().sigmoid()
            xy = (p[..., :2] * 2 - 0.5 + grid) * STRIDES[i]
            wh = (p[..., 2:4] * 2) ** 2 * anchor
            out.append(torch.cat([xy, wh, p[..., 4:]], dim=-1).view(b, -1, self.no))
        return torch.cat(out, dim=1)


def bbox_ciou(b1: torch.Tensor, b2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of matching boxes ``[K, 4]`` in ``xywh`` (Zheng et al. 2020).

    ``CIoU = IoU - rho^2 / c^2 - alpha v`` with ``rho`` the centre distance, ``c`` the enclosing box diagonal,
    ``v = 4/pi^2 (atan(w2/h2) - atan(w1/h1))^2`` and ``alpha = v / (v - IoU + 1)`` (no gradient through alpha).
    """
    (x1, y1, w1, h1), (x2, y2, w2, h2) = b1.unbind(-1), b2.unbind(-1)
    h1, h2 = h1 + eps, h2 + eps
    l1, r1, t1, d1 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    l2, r2, t2, d2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    inter = (torch.min(r1, r2) - torch.max(l1, l2)).clamp(0) * (torch.min(d1, d2) - torch.max(t1, t2)).clamp(0)
    iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
    cw, ch = torch.max(r1, r2) - torch.min(l1, l2), torch.max(d1, d2) - torch.min(t1, t2)
    c2 = cw**2 + ch**2 + eps
    rho2 = (x2 - x1) ** 2 + (y2 - y1) ** 2
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():  # clamp: rounding can push IoU of identical boxes past 1 + eps, and 0/0 would be NaN
        alpha = v / (v - iou + (1 + eps)).clamp(min=eps)
    return iou - (rho2 / c2 + v * alpha)


class YOLOv5(nn.Module):
    """YOLOv5 detector; see the module docstring for inputs and outputs.

    Args:
        depth, width: the variant's multiples (see ``YOLO_CONFIGS``).
        num_classes: classes (COCO: 80).
        conf_thres, iou_thres, max_det: inference post-processing (``detect.py`` defaults).
    """

    def __init__(self, depth: float = 1.0, width: float = 1.0, num_classes: int = 80, conf_thres: float = 0.25,
                 iou_thres: float = 0.45, max_det: int = 300) -> None:
        super().__init__()
        ch = lambda c: math.ceil(c * width / 8) * 8  # noqa: E731 - channel rounding of the yamls
        n = lambda k: max(round(k * depth), 1)  # noqa: E731
        c64, c128, c256, c512, c1024 = ch(64), ch(128), ch(256), ch(512), ch(1024)
        self.num_classes, self.conf_thres, self.iou_thres, self.max_det = num_classes, conf_thres, iou_thres, max_det
        # backbone: P1/2 .. P5/32
        self.stem = Conv(3, c64, 6, 2, 2)
        self.stage2 = nn.Sequential(Conv(c64, c128, 3, 2), C3(c128, c128, n(3)))
        self.stage3 = nn.Sequential(Conv(c128, c256, 3, 2), C3(c256, c256, n(6)))
        self.stage4 = nn.Sequential(Conv(c256, c512, 3, 2), C3(c512, c512, n(9)))
        self.stage5 = nn.Sequential(Conv(c512, c1024, 3, 2), C3(c1024, c1024, n(3)), SPPF(c1024, c1024, 5))
        # PANet neck: top-down (lat5, lat4) then bottom-up (down3, down4)
        self.lat5 = Conv(c1024, c512, 1)
        self.td4 = C3(2 * c512, c512, n(3), shortcut=False)
        self.lat4 = Conv(c512, c256, 1)
        self.out3 = C3(2 * c256, c256, n(3), shortcut=False)
        self.down3 = Conv(c256, c256, 3, 2)
        self.out4 = C3(2 * c256, c512, n(3), shortcut=False)
        self.down4 = Conv(c512, c512, 3, 2)
        self.out5 = C3(2 * c512, c1024, n(3), shortcut=False)
        self.detect = Detect(num_classes, (c256, c512, c1024))

    def raw(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[B, 3, H, W]`` -> raw head maps ``[B, 3, H/s, W/s, 5 + nc]`` for s = 8, 16, 32."""
        p3 = self.stage3(self.stage2(self.stem(x)))
        p4 = self.stage4(p3)
        p5 = self.stage5(p4)
        h5 = self.lat5(p5)
        h4 = self.lat4(self.td4(torch.cat([F.interpolate(h5, scale_factor=2.0, mode="nearest"), p4], dim=1)))
        o3 = self.out3(torch.cat([F.interpolate(h4, scale_factor=2.0, mode="nearest"), p3], dim=1))
        o4 = self.out4(torch.cat([self.down3(o3), h4], dim=1))
        o5 = self.out5(torch.cat([self.down4(o4), h5], dim=1))
        return self.detect([o3, o4, o5])

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Decoded predictions before NMS, ``[B, N, 5 + nc]`` (what Ultralytics' FLOPs cover)."""
        return self.detect.decode(self.raw(x))

    def nms(self, pred: torch.Tensor, image_size: tuple[int, int]) -> list[dict[str, torch.Tensor]]:
        """Score ``obj * cls`` (best class), threshold, class-aware NMS, top ``max_det``, clip to the image."""
        out = []
        for p in pred:
            p = p[p[:, 4] > self.conf_thres]
            scores, labels = (p[:, 5:] * p[:, 4:5]).max(dim=1)
            keep = scores > self.conf_thres
            p, scores, labels = p[keep], scores[keep], labels[keep]
            xy, wh = p[:, :2], p[:, 2:4]
            boxes = torch.cat([xy - wh / 2, xy + wh / 2], dim=1)
            keep = tvo.batched_nms(boxes, scores, labels, self.iou_thres)[: self.max_det]
            out.append({"boxes": tvo.clip_boxes_to_image(boxes[keep], image_size), "scores": scores[keep],
                        "labels": labels[keep]})
        return out

    def forward(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]] | None = None) -> Any:
        """Eval: per-image detections. Train: loss dict with ``targets``, raw maps without."""
        if self.training:
            raw = self.raw(images)
            return raw if targets is None else self.loss(raw, targets, images.shape[-2:])
        return self.nms(self.predict(images), (int(images.shape[-2]), int(images.shape[-1])))

    def loss(self, raw: list[torch.Tensor], targets: list[dict[str, torch.Tensor]],
             image_size: Sequence[int]) -> dict[str, torch.Tensor]:
        """YOLOv5's ComputeLoss; each term is multiplied by the batch size as in Ultralytics."""
        nl, bs, nc = len(raw), raw[0].shape[0], self.num_classes
        dev, dt = raw[0].device, raw[0].dtype
        # [T, 6] = (image, class, cx, cy, w, h) in pixels
        rows = []
        for i, t in enumerate(targets):
            b = t["boxes"].to(device=dev, dtype=torch.float32)
            cxcywh = torch.cat([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], dim=1)
            idx = torch.full((len(b), 1), float(i), device=dev)
            rows.append(torch.cat([idx, t["labels"].to(dev).float()[:, None], cxcywh], dim=1))
        tgt = torch.cat(rows)
        # YOLOv5 scales the gains by the number of levels, classes and image size (train.py)
        imgsz = float(max(image_size))
        w_box, w_cls = HYP["box"] * 3 / nl, HYP["cls"] * nc / 80 * 3 / nl
        w_obj = HYP["obj"] * (imgsz / 640) ** 2 * 3 / nl
        lbox, lobj, lcls = (torch.zeros((), device=dev) for _ in range(3))
        for i, p in enumerate(raw):
            b, a, gj, gi, tbox, tcls = self._build_targets(tgt, i, p.shape)
            tobj = torch.zeros(p.shape[:4], device=dev, dtype=torch.float32)
            if b.numel():
                ps = p[b, a, gj, gi].float()
                pxy = ps[:, :2].sigmoid() * 2 - 0.5
                pwh = (ps[:, 2:4].sigmoid() * 2) ** 2 * self.detect.anchors(i, dev)[a]
                iou = bbox_ciou(torch.cat([pxy, pwh], dim=1), tbox)
                lbox = lbox + (1.0 - iou).mean()
                tobj[b, a, gj, gi] = iou.detach().clamp(0)
                if nc > 1:
                    lcls = lcls + F.binary_cross_entropy_with_logits(ps[:, 5:], F.one_hot(tcls, nc).float())
            lobj = lobj + F.binary_cross_entropy_with_logits(p[..., 4].float(), tobj) * BALANCE[i]
        return {"loss_box": (lbox * w_box * bs).to(dt), "loss_obj": (lobj * w_obj * bs).to(dt),
                "loss_cls": (lcls * w_cls * bs).to(dt)}

    def _build_targets(self, tgt: torch.Tensor, level: int, shape: Sequence[int]) -> tuple[torch.Tensor, ...]:
        """Match targets to anchors of one level: wh ratio within ``anchor_t`` of the anchor, assigned to the cell
        holding the centre plus the two neighbouring cells nearest to the centre (3 cells per match)."""
        ny, nx = shape[2], shape[3]
        anchors = self.detect.anchors(level, tgt.device)  # [na, 2] grid units
        stride = STRIDES[level]
        na = anchors.shape[0]
        t = tgt.clone()
        t[:, 2:] = t[:, 2:] / stride  # to grid units
        t = t[None].expand(na, -1, -1)  # [na, T, 6]
        ai = torch.arange(na, device=tgt.device)[:, None].expand(-1, tgt.shape[0])
        r = t[..., 4:6] / anchors[:, None]
        ok = torch.max(r, 1 / r).max(dim=2).values < HYP["anchor_t"]
        t, ai = t[ok], ai[ok]
        gxy = t[:, 2:4]
        gxi = torch.tensor([nx, ny], device=t.device, dtype=t.dtype) - gxy
        g = 0.5
        left_up = (gxy % 1 < g) & (gxy > 1)  # centre in the left/top half: also use the cell to the left/top
        right_down = (gxi % 1 < g) & (gxi > 1)
        offsets = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=t.device, dtype=t.dtype) * g
        use = torch.stack([torch.ones_like(left_up[:, 0]), left_up[:, 0], left_up[:, 1], right_down[:, 0],
                           right_down[:, 1]])  # [5, M]
        t = t[None].expand(5, -1, -1)[use]
        ai = ai[None].expand(5, -1)[use]
        off = offsets[:, None].expand(-1, use.shape[1], -1)[use]
        gxy = t[:, 2:4]
        gij = (gxy - off).long()
        gi, gj = gij[:, 0].clamp(0, nx - 1), gij[:, 1].clamp(0, ny - 1)
        tbox = torch.cat([gxy - torch.stack([gi, gj], dim=1).to(gxy.dtype), t[:, 4:6]], dim=1)
        return t[:, 0].long(), ai, gj, gi, tbox, t[:, 1].long()


def _yolo(variant: str, **kwargs: Any) -> YOLOv5:
    depth, width = YOLO_CONFIGS[variant]
    return YOLOv5(depth, width, **kwargs)


def yolo_outputs(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
    """The accuracy gate's tensors: the three raw head maps ``[B, 3, H/s, W/s, 5 + nc]`` before decoding and NMS."""
    return dict(zip(("p3", "p4", "p5"), model.raw(batch.inputs[0])))  # type: ignore[operator]


_REG = dict(family="yolov5", task="detection", input_shape=(3, 640, 640), num_classes=80,
            batch_fn=detection_batch_fn(80, 0), loss_fn=detection_loss, outputs_fn=yolo_outputs)


@register_model(**_REG)
def yolov5n(**kwargs: Any) -> YOLOv5:
    """YOLOv5n v7.0 (1.9 M params, 4.5 GFLOPs at 640)."""
    return _yolo("n", **kwargs)


@register_model(**_REG)
def yolov5s(**kwargs: Any) -> YOLOv5:
    """YOLOv5s v7.0 (7.2 M params, 16.5 GFLOPs at 640)."""
    return _yolo("s", **kwargs)


@register_model(**_REG)
def yolov5m(**kwargs: Any) -> YOLOv5:
    """YOLOv5m v7.0 (21.2 M params, 49.0 GFLOPs at 640)."""
    return _yolo("m", **kwargs)


@register_model(**_REG)
def yolov5l(**kwargs: Any) -> YOLOv5:
    """YOLOv5l v7.0 (46.5 M params, 109.1 GFLOPs at 640)."""
    return _yolo("l", **kwargs)


@register_model(**_REG)
def yolov5x(**kwargs: Any) -> YOLOv5:
    """YOLOv5x v7.0 (86.7 M params, 205.7 GFLOPs at 640)."""
    return _yolo("x", **kwargs)
