# Faster R-CNN R50-FPN 1x on COCO (mmdet's zoo recipe), backbone swapped for ResNetV1Custom.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
# Registers ResNetV1Custom for any tool that reads this file, mmdet's own tools/train.py
# included (this project's tools import the package anyway).
# resnet_backbone.engine.mmdet_tools lets mmdet's tools (test.py, train.py --resume) read
# our Runner checkpoints under torch's weights_only default.
custom_imports = dict(imports=['resnet_backbone', 'resnet_backbone.engine.mmdet_tools'],
                      allow_failed_imports=False)
model = dict(backbone=dict(type='ResNetV1Custom'))
