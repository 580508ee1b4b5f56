"""OLTR's modulated attention: non-local self-attention on the backbone's feature map, weighted by a spatial
attention map and added back to the map.

Paper: Z. Liu et al., "Large-Scale Long-Tailed Recognition in an Open World", CVPR 2019,
https://arxiv.org/abs/1904.05160 (section 3.2, "modulated attention"); non-local block: X. Wang et al.,
"Non-local Neural Networks", CVPR 2018, https://arxiv.org/abs/1711.07971
"""
import math

import torch
import torch.nn as nn

__all__ = ['ModulatedAttention']


class ModulatedAttention(nn.Module):
    """Modulated attention on a ``(B, C, H, W)`` feature map of fixed size ``H x W``.

    With ``N = H * W`` positions, ``C' = C / reduction`` and the 1x1 convolutions ``theta``, ``phi``, ``g``
    (``C -> C'``, with bias) and ``mask`` (``C' -> C``, no bias, zero-initialised):

    .. math::

        A = \\mathrm{softmax}_j(\\theta(x)_i^\\top \\phi(x)_j), \\qquad
        m = \\mathrm{mask}(A\\, g(x)) \\in \\mathbb{R}^{C \\times N}, \\qquad
        s = \\mathrm{softmax}_N(W_s \\operatorname{vec}(x) + b_s) \\in \\mathbb{R}^{N},

    and the output is ``x + s * m`` (``s`` broadcast over channels). ``W_s`` is a linear map of the whole
    flattened map (``C * N -> N``), so the map size is fixed at construction (7 x 7 for 224-pixel inputs to a
    stride-32 ResNet).

    Initialisation follows what OLTR's code ends up with: its layer zeroes ``mask`` and draws the other three
    from Kaiming-normal, but the ResNet constructor that holds it then redraws every convolution weight from
    ``N(0, 2 / out_channels)`` (biases stay zero), so in the published stage 2 the mask starts random and the
    layer does not start as the identity. ``zero_init_mask=True`` keeps the zero mask instead (the layer then
    starts as the identity).

    Args:
        in_channels: Channels ``C`` of the feature map.
        spatial_size: ``(H, W)`` of the feature map.
        reduction: Channel reduction of the embeddings (OLTR: 2).
        zero_init_mask: Start ``mask`` at zero instead of OLTR's effective random initialisation.
    """

    def __init__(self, in_channels: int, spatial_size: tuple[int, int], reduction: int = 2,
                 zero_init_mask: bool = False):
        super().__init__()
        if in_channels < 1 or reduction < 1 or in_channels % reduction:
            raise ValueError(f'in_channels ({in_channels}) must be a positive multiple of reduction ({reduction}).')
        height, width = spatial_size
        if height < 1 or width < 1:
            raise ValueError(f'spatial_size must be positive, got {spatial_size}.')
        self.in_channels = in_channels
        self.spatial_size = (height, width)
        inner = in_channels // reduction
        self.theta = nn.Conv2d(in_channels, inner, kernel_size=1)
        self.phi = nn.Conv2d(in_channels, inner, kernel_size=1)
        self.g = nn.Conv2d(in_channels, inner, kernel_size=1)
        self.mask = nn.Conv2d(inner, in_channels, kernel_size=1, bias=False)
        self.fc_spatial = nn.Linear(in_channels * height * width, height * width)
        for conv in (self.theta, self.phi, self.g, self.mask):
            nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / conv.out_channels))  # 1x1 kernels: fan-out = out
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        if zero_init_mask:
            nn.init.zeros_(self.mask.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        if (channels, height, width) != (self.in_channels, *self.spatial_size):
            raise ValueError(f'expected feature maps of shape (C, H, W) = ({self.in_channels}, '
                             f'{self.spatial_size[0]}, {self.spatial_size[1]}), got ({channels}, {height}, {width}); '
                             'the attention is built for one input image size.')
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, C')
        phi = self.phi(x).flatten(2)  # (B, C', N)
        g = self.g(x).flatten(2).transpose(1, 2)  # (B, N, C')
        affinity = torch.softmax(theta @ phi, dim=-1)  # (B, N, N), rows sum to 1
        context = (affinity @ g).transpose(1, 2).reshape(batch, -1, height, width)
        modulation = self.mask(context)
        spatial = torch.softmax(self.fc_spatial(x.flatten(1)), dim=1).view(batch, 1, height, width)
        return x + spatial * modulation
