"""CBAM: Convolutional Block Attention Module (Woo et al., ECCV 2018).

A feature map is refined twice, in this order:

1. channel attention: an MLP shared between the average- and the max-pooled descriptors,
   ``M_c = σ(MLP(avgpool(F)) + MLP(maxpool(F)))`` of shape ``(N, C, 1, 1)``;
2. spatial attention: a 7×7 convolution over the channel-wise mean and max maps,
   ``M_s = σ(conv([mean_c(F'), max_c(F')]))`` of shape ``(N, 1, h, w)``.

The spatial gate is its own module (:class:`SpatialAttention`) whose forward returns the map, so a
forward hook on it captures ``M_s`` directly; :class:`CBAM` also keeps the last map it computed
(detached) in ``last_attention`` so that it can be read after a plain forward pass. Over-MAP uses it
as one of its "where does the model look" sources.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import check_positive_int

__all__ = ["ChannelAttention", "SpatialAttention", "CBAM"]


class ChannelAttention(nn.Module):
    """Channel gate ``σ(MLP(avg) + MLP(max))``.

    Args:
        channels (int): C, channels of the feature map.
        reduction (int, optional): hidden width of the MLP is ``max(C // reduction, min_hidden)``.
            Default: 16 (the paper's value).
        min_hidden (int, optional): lower bound of the hidden width, so narrow layers keep a usable
            MLP. Default: 8.
    """

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 8):
        super().__init__()
        check_positive_int(channels, "channels")
        check_positive_int(reduction, "reduction")
        hidden = max(channels // reduction, min_hidden)
        # 1×1 convolutions act as the shared MLP on (N, C, 1, 1) descriptors without reshaping.
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Args: x (Tensor[N, C, h, w]). Returns: Tensor[N, C, 1, 1], the gate in (0, 1)."""
        avg = x.mean(dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
        mx = x.amax(dim=(2, 3), keepdim=True)  # (N, C, 1, 1)
        return torch.sigmoid(self.mlp(avg) + self.mlp(mx))


class SpatialAttention(nn.Module):
    """Spatial gate ``σ(BN(conv_k×k([mean_c(x), max_c(x)])))``.

    Args:
        kernel_size (int, optional): odd kernel size of the convolution. Default: 7 (the paper's).

    The forward returns the attention map itself (not the gated features), so a forward hook on this
    module sees ``Tensor[N, 1, h, w]`` with values in (0, 1).
    """

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        check_positive_int(kernel_size, "kernel_size")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: expected an odd int, got {kernel_size}")
        # BN after the conv as in the authors' code (BasicConv with bn=True, relu=False): it keeps
        # the pre-sigmoid logits in a range where the gate is neither saturated nor flat.
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: Tensor) -> Tensor:
        """Args: x (Tensor[N, C, h, w]). Returns: Tensor[N, 1, h, w], the gate in (0, 1)."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)  # (N, 2, h, w)
        return torch.sigmoid(self.bn(self.conv(pooled)))


class CBAM(nn.Module):
    """Channel then spatial attention, ``F'' = M_s(F') · F'`` with ``F' = M_c(F) · F``.

    Args:
        channels (int): C, channels of the feature map.
        reduction (int, optional): channel-MLP reduction ratio. Default: 16.
        kernel_size (int, optional): spatial-gate kernel size. Default: 7.
        residual (bool, optional): return ``F + F''`` instead of ``F''``. In a network without skip
            connections, stacked gates multiply the signal (and its gradient) by up to ~1/4 per
            block at initialisation; the residual form keeps an identity path, as CBAM has when
            it sits on a ResNet block's residual branch. The attention maps mean the same.
            Default: False.

    Attributes:
        channel (ChannelAttention): the channel gate.
        spatial (SpatialAttention): the spatial gate; hook it to capture ``Tensor[N, 1, h, w]``.
        last_attention (Tensor[N, 1, h, w] or None): the spatial map of the last forward pass,
            detached, values in (0, 1); ``None`` before the first pass.

    Shapes: input and output ``Tensor[N, C, h, w]``.
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7,
                 residual: bool = False):
        super().__init__()
        self.residual = residual
        self.channel = ChannelAttention(channels, reduction)
        self.spatial = SpatialAttention(kernel_size)
        self.last_attention: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        refined = x * self.channel(x)  # (N, C, h, w) * (N, C, 1, 1)
        attention = self.spatial(refined)  # (N, 1, h, w)
        # Kept detached: reading the map must not hold the autograd graph of the whole batch alive.
        self.last_attention = attention.detach()
        refined = refined * attention
        return x + refined if self.residual else refined

    def extra_repr(self) -> str:
        return f"residual={self.residual}"
