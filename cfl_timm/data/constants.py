"""Per-channel normalisation statistics of the CIFAR training sets (RGB, pixel values scaled to [0, 1]).

Mean and standard deviation over all pixels of the 50,000 training images of CIFAR-10 / CIFAR-100
(A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009). Some public CIFAR code uses
std (0.2023, 0.1994, 0.2010) for CIFAR-10, a per-image average rather than the dataset statistic; pass
``--std`` to reproduce such a recipe exactly.
"""

__all__ = ['CIFAR10_MEAN', 'CIFAR10_STD', 'CIFAR100_MEAN', 'CIFAR100_STD']

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
