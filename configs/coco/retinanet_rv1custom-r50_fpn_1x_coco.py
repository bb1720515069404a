# RetinaNet R50-FPN 1x on COCO (mmdet's zoo recipe), backbone swapped for ResNetV1Custom.
# Every other backbone key (depth, frozen_stages=1, norm_eval, torchvision weights) is
# mmdet's own.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
model = dict(backbone=dict(type='ResNetV1Custom'))
