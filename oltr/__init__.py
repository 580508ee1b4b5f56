"""OLTR adapter, stages 1 and 2: long-tailed recognition (ImageNet-LT, Places-LT) with timm backbones, cfl_timm losses.

Benchmarks: Z. Liu et al., "Large-Scale Long-Tailed Recognition in an Open World" (OLTR), CVPR 2019,
https://arxiv.org/abs/1904.05160. Loss: L. N. Smith, "Cyclical Focal Loss", https://arxiv.org/abs/2202.08978
"""
