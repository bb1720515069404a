# Faster R-CNN R50-V1c-FPN 1x: deep 3x3 stem (ResNet-V1c), mmdet's V1c ImageNet weights.
_base_ = './faster-rcnn_rv1custom-r50_fpn_1x_coco.py'
model = dict(
    backbone=dict(
        stem_type='deep',
        init_cfg=dict(type='Pretrained', checkpoint='open-mmlab://resnet50_v1c')))
