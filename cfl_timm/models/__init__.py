"""CIFAR networks registered in timm's model registry (``timm.create_model('resnet20_cifar')`` etc.).

Importing this package (``import cfl_timm`` does) registers: ``resnet{8,14,20,32,56,110}_cifar`` (He et al.
6n+2, option A shortcuts; ``he_resnet_cifar.py``), ``resnet{18,34,50,101}_cifar`` (timm's ResNet with a 3x3
stride-1 stem; ``timm_resnet_cifar_stem.py``), ``wide_resnet28_10_cifar`` and ``densenet121_cifar``. See
``CIFAR_MODELS``. Each file is named by the origin of its networks.
"""
from .densenet_cifar import DenseNetCifar
from .he_resnet_cifar import SHORTCUT_TYPES, CifarResNet, ZeroPadShortcut
from .timm_resnet_cifar_stem import ResNetCifar
from .wide_resnet_cifar import WideResNetCifar

CIFAR_MODELS = (
    'resnet8_cifar', 'resnet14_cifar', 'resnet20_cifar', 'resnet32_cifar', 'resnet56_cifar', 'resnet110_cifar',
    'resnet18_cifar', 'resnet34_cifar', 'resnet50_cifar', 'resnet101_cifar',
    'wide_resnet28_10_cifar', 'densenet121_cifar',
)
