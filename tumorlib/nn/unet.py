"""The reference design's 3D U-Net: ``DoubleConv3D``, ``Down3D``, ``Up3D`` and ``UNet3D``.

With the default ``features=(32, 64, 128, 256)`` the network holds **22,577,987** parameters (the reference design's
text says "about 11 million"; its own diagram, rebuilt layer by layer here, gives 22.6 M).

Design (from the reference design):

- ``DoubleConv3D``: two 3x3x3 convolutions, each followed by ``InstanceNorm3d`` and ``LeakyReLU(0.01)``.
  Instance normalisation because the batch holds 1-2 patches, too few for batch statistics.
- ``Down3D``: ``MaxPool3d(2)`` then ``DoubleConv3D``; ``Up3D``: ``ConvTranspose3d`` (2x2x2, stride 2),
  concatenation with the encoder's skip, ``DoubleConv3D``.
- Encoder 4 -> 32 -> 64 -> 128 -> 256, bottleneck 512, four decoder stages, a 1x1x1 head to 3 logits.

Inputs whose sides are not multiples of ``2 ** len(features)`` (16 by default) are zero-padded at the far
end of each axis inside ``forward`` and the logits cropped back, so any patch or volume size works.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from tumorlib.core.config import Config

__all__ = [
    "DoubleConv3D",
    "Down3D",
    "Up3D",
    "UNet3D",
    "count_parameters",
    "layer_table",
    "model_from_config",
]


class DoubleConv3D(nn.Module):
    """(Conv3d 3x3x3 -> InstanceNorm3d -> LeakyReLU(0.01)) twice.

    Args:
        in_channels: input channels.
        out_channels: output channels of both convolutions.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.InstanceNorm3d(out_channels),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.InstanceNorm3d(out_channels),
            nn.LeakyReLU(0.01, inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, D, H, W) -> (B, out_channels, D, H, W)."""
        return self.block(x)


class Down3D(nn.Module):
    """MaxPool3d(2) then ``DoubleConv3D``: halves each side.

    Args:
        in_channels: input channels.
        out_channels: output channels.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool3d(2)
        self.conv = DoubleConv3D(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, D, H, W) -> (B, out_channels, D/2, H/2, W/2)."""
        return self.conv(self.pool(x))


class Up3D(nn.Module):
    """ConvTranspose3d (2x2x2, stride 2), concatenation with the skip, ``DoubleConv3D``.

    Args:
        in_channels: channels coming from below (the transposed convolution halves them).
        out_channels: channels of the skip connection and of the output.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv3D(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """x: (B, in_channels, d, h, w), skip: (B, out_channels, 2d, 2h, 2w) -> (B, out_channels, 2d, 2h, 2w)."""
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet3D(nn.Module):
    """The reference design's 3D U-Net.

    Args:
        in_channels: input modalities (4: T1, T1ce, T2, FLAIR).
        num_classes: output logits (3: necrosis/NET, edema, enhancing; sigmoid per channel).
        features: encoder widths; the bottleneck has ``2 * features[-1]`` channels and the network pools
            ``len(features)`` times.

    Raises:
        ValueError: empty ``features`` or a non-positive channel count.
    """

    def __init__(self, in_channels: int = 4, num_classes: int = 3,
                 features: Sequence[int] = (32, 64, 128, 256)) -> None:
        super().__init__()
        features = tuple(int(f) for f in features)
        if not features or min(features) < 1 or in_channels < 1 or num_classes < 1:
            raise ValueError(f"UNet3D needs positive channel counts, got in_channels={in_channels}, "
                             f"num_classes={num_classes}, features={features}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.features = features
        widths = features + (2 * features[-1],)
        self.inc = DoubleConv3D(in_channels, widths[0])
        self.downs = nn.ModuleList(Down3D(a, b) for a, b in zip(widths[:-1], widths[1:]))
        rev = widths[::-1]
        self.ups = nn.ModuleList(Up3D(a, b) for a, b in zip(rev[:-1], rev[1:]))
        self.head = nn.Conv3d(widths[0], num_classes, kernel_size=1)

    @property
    def size_multiple(self) -> int:
        """Each side of the input is padded up to a multiple of this (``2 ** len(features)``)."""
        return 2 ** len(self.features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for every voxel.

        Args:
            x: (B, in_channels, D, H, W) float; any D, H, W (padded inside to a multiple of
                ``size_multiple`` with zeros, then cropped back).

        Returns:
            (B, num_classes, D, H, W) logits, same dtype as the computation (float32 unless autocast).

        Raises:
            ValueError: ``x`` is not 5-D, has the wrong number of channels, or every side is at most
                ``size_multiple`` (a one-voxel bottleneck).
        """
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet3D expects input (B, {self.in_channels}, D, H, W), got {tuple(x.shape)}")
        size = tuple(x.shape[2:])
        m = self.size_multiple
        pad = [(-s) % m for s in size]
        if all(s + p == m for s, p in zip(size, pad)):
            raise ValueError(f"UNet3D input {'x'.join(map(str, size))} pads to {m}x{m}x{m}: the bottleneck would "
                             f"hold a single voxel, where InstanceNorm3d is undefined; make one side > {m}")
        if any(pad):
            # F.pad takes (W_left, W_right, H_left, H_right, D_left, D_right)
            x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        y = self.head(y)
        if any(pad):
            y = y[:, :, : size[0], : size[1], : size[2]]
        return y


def model_from_config(config: Config) -> UNet3D:
    """The ``UNet3D`` a config describes (``in_channels``, ``num_classes``, ``features``).

    Args:
        config: a ``tumorlib.core.config.Config``.

    Returns:
        A freshly initialised model on the CPU.
    """
    return UNet3D(config.in_channels, config.num_classes, config.features)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (22,577,987 for the default ``UNet3D``).

    Args:
        model: any module.
        trainable_only: count only parameters with ``requires_grad``.

    Returns:
        The total element count.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _block_shape(model: UNet3D, patch_size: Sequence[int] | None, level: int) -> str:
    if patch_size is None:
        return ""
    m = model.size_multiple
    padded = [s + (-s) % m for s in patch_size]
    return "x".join(str(s // 2 ** level) for s in padded)


def layer_table(model: UNet3D, patch_size: Sequence[int] | None = None) -> pd.DataFrame:
    """One row per stage of a ``UNet3D``: what it does, channels in/out, output size and parameters.

    Args:
        model: the network.
        patch_size: (D, H, W) of the input; when given, each stage's output size (after the internal
            padding to ``size_multiple``) is listed.

    Returns:
        DataFrame with columns ``stage``, ``layers``, ``in_channels``, ``out_channels``, ``output_size``
        (``"DxHxW"`` or empty), ``parameters``; the last row ``total`` sums the parameters.
    """
    rows = []
    widths = model.features + (2 * model.features[-1],)
    rows.append(("inc", "DoubleConv3D", model.in_channels, widths[0], _block_shape(model, patch_size, 0),
                 count_parameters(model.inc)))
    for i, down in enumerate(model.downs):
        name = "bottleneck" if i == len(model.downs) - 1 else f"down{i + 1}"
        rows.append((name, "MaxPool3d(2) + DoubleConv3D", widths[i], widths[i + 1],
                     _block_shape(model, patch_size, i + 1), count_parameters(down)))
    depth = len(model.downs)
    for i, up in enumerate(model.ups):
        a, b = widths[depth - i], widths[depth - i - 1]
        rows.append((f"up{i + 1}", "ConvTranspose3d(2) + concat skip + DoubleConv3D", a, b,
                     _block_shape(model, patch_size, depth - i - 1), count_parameters(up)))
    rows.append(("head", "Conv3d 1x1x1 (logits)", widths[0], model.num_classes,
                 _block_shape(model, patch_size, 0), count_parameters(model.head)))
    table = pd.DataFrame(rows, columns=["stage", "layers", "in_channels", "out_channels", "output_size",
                                        "parameters"])
    total = pd.DataFrame([("total", "", model.in_channels, model.num_classes, "", int(table.parameters.sum()))],
                         columns=table.columns)
    return pd.concat([table, total], ignore_index=True)
