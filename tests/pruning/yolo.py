"""A small YOLOv8-style detector for the pruning tests (no weights, no dependencies).

The blocks follow Ultralytics' definitions, shrunk: Conv-BN-SiLU, C2f (a 1x1 conv whose
output is chunked in two, bottlenecks chained on the second half, every piece
concatenated), a CSP C3 block, SPPF (three chained max-pools concatenated), a PAN neck
(upsample + concat top-down, strided conv + concat bottom-up) over three levels and a
decoupled Detect head per level (box distribution and class branches concatenated). In
training mode the head returns the raw per-level maps; in eval mode it decodes them
(split into box and class channels, distribution focal loss integral, anchor points,
sigmoid) and returns only the decoded predictions, as an exported model does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Conv(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c1: int, c2: int, shortcut: bool = True):
        super().__init__()
        self.cv1 = Conv(c1, c2, 3)
        self.cv2 = Conv(c2, c2, 3)
        self.add = shortcut and c1 == c2

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """``split=True`` splits with fixed sizes (Ultralytics' ``forward_split``), which pins
    ``cv1``'s channels; ``chunk`` halves whatever ``cv1`` gives."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, split: bool = False):
        super().__init__()
        self.c = c2 // 2
        self.split = split
        self.cv1 = Conv(c1, 2 * self.c)
        self.cv2 = Conv((2 + n) * self.c, c2)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut) for _ in range(n))

    def forward(self, x: Tensor) -> Tensor:
        y = list(self.cv1(x).split((self.c, self.c), 1) if self.split else self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class C3(nn.Module):
    def __init__(self, c1: int, c2: int, n: int = 1):
        super().__init__()
        c_ = c2 // 2
        self.cv1 = Conv(c1, c_)
        self.cv2 = Conv(c1, c_)
        self.cv3 = Conv(2 * c_, c2)
        self.m = nn.Sequential(*(Bottleneck(c_, c_) for _ in range(n)))

    def forward(self, x: Tensor) -> Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_)
        self.cv2 = Conv(c_ * 4, c2)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: Tensor) -> Tensor:
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """The integral of the distribution focal loss: a fixed 1x1 conv over ``c1`` bins."""

    def __init__(self, c1: int):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)
        self.c1 = c1

    def forward(self, x: Tensor) -> Tensor:
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def make_anchors(feats: list[Tensor], strides: Tensor, offset: float = 0.5) -> tuple[Tensor, Tensor]:
    points, stride_tensor = [], []
    for f, stride in zip(feats, strides):
        h, w = f.shape[2:]
        sx = torch.arange(w, dtype=f.dtype) + offset
        sy = torch.arange(h, dtype=f.dtype) + offset
        sy, sx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((sx, sy), -1).view(-1, 2))
        stride_tensor.append(torch.full((h * w, 1), float(stride), dtype=f.dtype))
    return torch.cat(points), torch.cat(stride_tensor)


def dist2bbox(distance: Tensor, anchor_points: Tensor, dim: int = 1) -> Tensor:
    lt, rb = distance.chunk(2, dim)
    x1y1, x2y2 = anchor_points - lt, anchor_points + rb
    return torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), dim)


class Detect(nn.Module):
    def __init__(self, nc: int, ch: tuple[int, ...], reg_max: int = 4):
        super().__init__()
        self.nc, self.reg_max, self.no = nc, reg_max, nc + 4 * reg_max
        c2, c3 = max(16, ch[0] // 4, 4 * reg_max), max(ch[0], nc)
        self.cv2 = nn.ModuleList(
            nn.Sequential(Conv(x, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1)) for x in ch
        )
        self.cv3 = nn.ModuleList(nn.Sequential(Conv(x, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for x in ch)
        self.dfl = DFL(reg_max)
        self.register_buffer("stride", torch.tensor([8.0, 16.0, 32.0]))

    def forward(self, x: list[Tensor]) -> list[Tensor] | Tensor:
        x = [torch.cat((self.cv2[i](xi), self.cv3[i](xi)), 1) for i, xi in enumerate(x)]
        if self.training:
            return x
        b = x[0].shape[0]
        x_cat = torch.cat([xi.view(b, self.no, -1) for xi in x], 2)
        anchors, strides = (t.transpose(0, 1) for t in make_anchors(x, self.stride))
        box, cls = x_cat.split((4 * self.reg_max, self.nc), 1)
        dbox = dist2bbox(self.dfl(box), anchors.unsqueeze(0), dim=1) * strides
        return torch.cat((dbox, cls.sigmoid()), 1)


class TinyYOLO(nn.Module):
    """Backbone (C2f, a C2f with a fixed-size split, C3, SPPF), PAN neck, Detect; input 64x64."""

    def __init__(self, nc: int = 3):
        super().__init__()
        self.b0 = Conv(3, 8, 3, 2)  # P1/2
        self.b1 = Conv(8, 16, 3, 2)  # P2/4
        self.b2 = C2f(16, 16, 1, shortcut=True)
        self.b3 = Conv(16, 32, 3, 2)  # P3/8
        self.b4 = C2f(32, 32, 2, shortcut=True)
        self.b5 = Conv(32, 64, 3, 2)  # P4/16
        self.b6 = C2f(64, 64, 1, shortcut=True, split=True)
        self.b7 = Conv(64, 64, 3, 2)  # P5/32
        self.b8 = C3(64, 64)
        self.b9 = SPPF(64, 64)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.h1 = C2f(64 + 64, 32)
        self.h2 = C2f(32 + 32, 16)  # P3 out
        self.d1 = Conv(16, 16, 3, 2)
        self.h3 = C2f(16 + 32, 32)  # P4 out
        self.d2 = Conv(32, 32, 3, 2)
        self.h4 = C2f(32 + 64, 64)  # P5 out
        self.detect = Detect(nc, (16, 32, 64))

    def forward(self, x: Tensor) -> list[Tensor] | Tensor:
        p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
        p4 = self.b6(self.b5(p3))
        p5 = self.b9(self.b8(self.b7(p4)))
        n4 = self.h1(torch.cat((self.up(p5), p4), 1))
        o3 = self.h2(torch.cat((F.interpolate(n4, scale_factor=2.0, mode="nearest"), p3), 1))
        o4 = self.h3(torch.cat((self.d1(o3), n4), 1))
        o5 = self.h4(torch.cat((self.d2(o4), p5), 1))
        return self.detect([o3, o4, o5])
