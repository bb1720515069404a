# Faster R-CNN R50-FPN 1x with gradient checkpointing in every trainable block
# (about 0.4x the activation memory of the backbone for a little more compute).
_base_ = './faster-rcnn_rv1custom-r50_fpn_1x_coco.py'
model = dict(backbone=dict(with_cp=True))
