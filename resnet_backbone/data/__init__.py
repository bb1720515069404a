"""The embedded synthetic detection data set (see :mod:`resnet_backbone.data.shapes`)."""
from .shapes import CLASSES, generate

__all__ = ['CLASSES', 'generate']
