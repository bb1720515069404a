"""resnet_backbone: a ResNet feature-extraction backbone for MMDetection.

``import resnet_backbone`` registers ``ResNetV1Custom`` (and the V1c/V1d presets) in
mmdet's ``MODELS`` registry. It imports neither ``mmdet.models`` nor ``mmcv.ops``.
"""
from . import registry  # noqa: E402,F401  (registers the backbones)
from .blocks import BasicBlock, Bottleneck
from .norm import FrozenBatchNorm2d
from .resnet import ARCH_SETTINGS, ResNetV1cCustom, ResNetV1Custom, ResNetV1dCustom, ShapeSpec
from .stages import ResLayer

__version__ = '0.1.0'
__all__ = ['ARCH_SETTINGS', 'BasicBlock', 'Bottleneck', 'FrozenBatchNorm2d', 'ResLayer',
           'ResNetV1Custom', 'ResNetV1cCustom', 'ResNetV1dCustom', 'ShapeSpec']
