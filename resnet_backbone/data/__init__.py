"""The embedded synthetic detection data set: see :mod:`resnet_backbone.data.shapes`."""
