"""OLTR's modulated attention: non-local self-attention on the backbone's feature map, weighted by a spatial
attention map and added back to the map.

Paper: Z. Liu et al., "Large-Scale Long-Tailed Recognition in an Open World", CVPR 2019,
https://arxiv.org/abs/1904.05160 (section 3.2, "modulated attention"); non-local block: X. Wang et al.,
"Non-local Neural Networks", CVPR 2018, https://arxiv.org/abs/1711.07971
"""
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
    stride-32 ResNet). Because ``mask`` starts at zero, the layer starts as the identity: stage 2 begins from
    exactly the stage-1 feature map.

    Args:
        in_channels: Channels ``C`` of the feature map.
        spatial_size: ``(H, W)`` of the feature map.
        reduction: Channel reduction of the embeddings (OLTR: 2).
    """

    def __init__(self, in_channels: int, spatial_size: tuple[int, int], reduction: int = 2):
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
        for conv in (self.theta, self.phi, self.g):
            nn.init.kaiming_normal_(conv.weight)
            nn.init.zeros_(conv.bias)
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
