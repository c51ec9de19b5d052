"""Networks no single library ships as a 2.5D segmenter: torchvision's FCN with a
2.5D stem, smp U-Net++ with a context block at its bottleneck, a U-Net of inception
blocks, and the empty-slice gate that wraps any of them.

Only the blocks are written here; everything else is reused (torchvision's FCN,
smp's encoders and U-Net++ decoder). Every network maps ``(N, C, H, W)`` float32
(``C = len(context_offsets)``) to ``(N, out_channels, H, W)`` logits and keeps its
weights in a plain ``state_dict`` (safetensors, :mod:`napari_gi_seg.models.network`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

#: Logit magnitude that empties a gated slice: softmax(30 vs 0) puts 1 - 1e-13 on
#: background, sigmoid(-30) is 1e-13.
GATE_EMPTY_LOGIT = 30.0


class TorchvisionFCN(nn.Module):
    """torchvision's FCN-ResNet50 (Long et al., CVPR 2015; torchvision
    ``fcn_resnet50``), untrained (``weights=None, weights_backbone=None``, nothing is
    downloaded), its first convolution replaced by one taking ``in_channels`` 2.5D
    slices; returns the ``"out"`` logits only (no auxiliary head)."""

    def __init__(self, in_channels: int, classes: int):
        super().__init__()
        from torchvision.models.segmentation import fcn_resnet50

        net = fcn_resnet50(weights=None, weights_backbone=None, num_classes=classes, aux_loss=False)
        net.backbone.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.net = net

    @property
    def encoder(self) -> nn.Module:
        """The ResNet-50 backbone (``--freeze-encoder``); not a second state-dict entry."""
        return self.net.backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


class ContextBlock(nn.Module):
    """Residual multi-dilation context block for a U-Net bottleneck: parallel 3x3
    convolutions at dilation 1, 2 and 4 (the atrous idea of DeepLab, Chen et al. 2017,
    at a scale that fits a 5-16-pixel bottleneck) plus global average pooling, fused by
    a 1x1 convolution and added to the input (He et al. 2016). Shape-preserving:
    ``(N, ch, h, w) -> (N, ch, h, w)``. The fusion starts at zero, so an untrained
    block is the identity and the encoder's features pass unchanged."""

    def __init__(self, channels: int, dilations: tuple[int, ...] = (1, 2, 4)):
        super().__init__()
        mid = max(16, channels // 4)
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, mid, 3, padding=d, dilation=d, bias=False), nn.BatchNorm2d(mid), nn.ReLU(True)
            )
            for d in dilations
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, mid, 1), nn.ReLU(True))
        self.fuse = nn.Conv2d(mid * (len(dilations) + 1), channels, 1)
        nn.init.zeros_(self.fuse.weight)
        nn.init.zeros_(self.fuse.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [b(x) for b in self.branches]
        parts.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))
        return x + self.fuse(torch.cat(parts, 1))


class ResUnetPlusPlus(nn.Module):
    """Residual U-Net++: smp ``UnetPlusPlus`` (Zhou et al. 2018) on a ResNet encoder
    (residual blocks; ``encoder`` is any smp ``resnet*`` name) with a
    :class:`ContextBlock` on the deepest features before the nested decoder."""

    def __init__(self, encoder: str, in_channels: int, classes: int):
        super().__init__()
        import segmentation_models_pytorch as smp

        base = smp.UnetPlusPlus(encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=classes)
        self.encoder, self.decoder, self.segmentation_head = base.encoder, base.decoder, base.segmentation_head
        self.context = ContextBlock(self.encoder.out_channels[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = list(self.encoder(x))
        f[-1] = self.context(f[-1])
        return self.segmentation_head(self.decoder(f))


class InceptionBlock(nn.Module):
    """Inception block (Szegedy et al., CVPR 2015, with the 5x5 as two 3x3 of
    Inception-v3): four branches, 1x1 / 1x1-3x3 / 1x1-3x3-3x3 / 3x3 max-pool-1x1, each
    ``out // 4`` channels, concatenated, batch norm + ReLU after every convolution.
    ``(N, in, h, w) -> (N, out, h, w)``; ``out`` must be a multiple of 4."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        b = cout // 4

        def cbr(i, o, k):
            return [nn.Conv2d(i, o, k, padding=k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU(True)]

        self.b1 = nn.Sequential(*cbr(cin, b, 1))
        self.b3 = nn.Sequential(*cbr(cin, b, 1), *cbr(b, b, 3))
        self.b5 = nn.Sequential(*cbr(cin, b, 1), *cbr(b, b, 3), *cbr(b, b, 3))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), *cbr(cin, b, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


class InceptionUnet(nn.Module):
    """U-Net (Ronneberger et al. 2015) whose double convolutions are two
    :class:`InceptionBlock` s: ``widths`` channels per level (default 16-256, as the
    bundled MONAI U-Net), 2x2 max-pool down, bilinear up + skip concatenation.
    Height and width must be multiples of ``2 ** (len(widths) - 1)``."""

    def __init__(self, in_channels: int, classes: int, widths: tuple[int, ...] = (16, 32, 64, 128, 256)):
        super().__init__()

        def stage(i, o):
            return nn.Sequential(InceptionBlock(i, o), InceptionBlock(o, o))

        self.down = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.down.append(stage(c, w))
            c = w
        self.up = nn.ModuleList(stage(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(len(widths) - 1)))
        self.head = nn.Conv2d(widths[0], classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, d in enumerate(self.down):
            x = d(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for u in self.up:
            s = skips.pop()
            x = u(torch.cat([F.interpolate(x, size=s.shape[-2:], mode="bilinear", align_corners=False), s], 1))
        return self.head(x)


class SliceGate(nn.Module):
    """A tiny slice classifier: logit of "this slice holds any foreground class".

    Four stride-2 3x3 convolutions (16-32-64-64 channels, group norm of 8 groups
    (Wu & He 2018: no running statistics, so training and inference see the same
    normalisation however few slices a batch holds), ReLU) on the network's own 2.5D
    input, global average and max pooling concatenated, one linear unit:
    ``(N, C, H, W) -> (N,)``. Separate from the segmenter, so it gates any network
    (the two-stage classifier-then-segmenter of the UW-Madison GI tract winners)."""

    def __init__(self, in_channels: int, widths: tuple[int, ...] = (16, 32, 64, 64)):
        super().__init__()
        layers, c = [], in_channels
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1, bias=False), nn.GroupNorm(8, w), nn.ReLU(True)]
            c = w
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(2 * c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.fc(torch.cat([f.mean((-2, -1)), f.amax((-2, -1))], 1))[:, 0]


class GatedNetwork(nn.Module):
    """A segmenter and a :class:`SliceGate`.

    ``forward(x)`` returns the segmenter's logits ``(N, K, H, W)`` unchanged;
    ``forward(x, with_gate=True)`` returns ``(logits, gate_logit (N,))`` (training and
    the engine, which empties slices with :func:`apply_gate`). State-dict names:
    ``seg.*`` and ``gate.*``."""

    def __init__(self, seg: nn.Module, in_channels: int):
        super().__init__()
        self.seg = seg
        self.gate = SliceGate(in_channels)

    @property
    def encoder(self) -> nn.Module:
        """The segmenter's encoder (``--freeze-encoder``); ``AttributeError`` when it has none."""
        enc = getattr(self.seg, "encoder", None)
        if enc is None:
            raise AttributeError(f"{type(self.seg).__name__} has no encoder")
        return enc

    def forward(self, x: torch.Tensor, with_gate: bool = False):
        logits = self.seg(x)
        return (logits, self.gate(x)) if with_gate else logits


def apply_gate(logits: torch.Tensor, gate_logit: torch.Tensor, threshold: float, softmax: bool) -> torch.Tensor:
    """Empty the slices whose gate probability ``sigmoid(gate_logit)`` is below
    ``threshold``: their logits become background (softmax: channel 0 at
    +:data:`GATE_EMPTY_LOGIT`, the rest 0; sigmoid: every channel at -30).

    ``logits`` ``(N, K, H, W)``, ``gate_logit`` ``(N,)``; returns a new tensor."""
    keep = (torch.sigmoid(gate_logit.float()) >= threshold).view(-1, 1, 1, 1)
    empty = torch.zeros_like(logits)
    if softmax:
        empty[:, 0] = GATE_EMPTY_LOGIT
    else:
        empty.fill_(-GATE_EMPTY_LOGIT)
    return torch.where(keep, logits, empty)
