# Faster R-CNN R50-V1d-FPN 1x: deep stem + avg-pool shortcut (ResNet-V1d, mmdet's
# ResNetV1d). Initialise from a V1d ImageNet checkpoint you have locally, e.g. timm's
# resnet50d converted with tools/convert_weights.py.
_base_ = './faster-rcnn_rv1custom-r50_fpn_1x_coco.py'
model = dict(
    backbone=dict(
        stem_type='deep',
        avg_down=True,
        init_cfg=dict(type='Pretrained', checkpoint='checkpoints/resnet50d_rv1custom.pth')))
