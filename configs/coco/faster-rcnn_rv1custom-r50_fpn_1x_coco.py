# Faster R-CNN R50-FPN 1x on COCO (mmdet's zoo recipe), backbone swapped for ResNetV1Custom.
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
model = dict(backbone=dict(type='ResNetV1Custom'))
