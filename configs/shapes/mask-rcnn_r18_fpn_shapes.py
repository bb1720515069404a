# Mask R-CNN + FPN with a ResNetV1Custom-18 backbone, from scratch on the embedded shapes
# data set (128 px), boxes and instance masks.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    '../_base_/shapes_detection.py',
    '../_base_/iter_schedule.py',  # includes mmdet's default_runtime
]
# Registers ResNetV1Custom for any tool that reads this file, mmdet's own tools/train.py
# included (this project's tools import the package anyway).
# resnet_backbone.engine.mmdet_tools lets mmdet's tools (test.py, train.py --resume) read
# our Runner checkpoints under torch's weights_only default.
custom_imports = dict(imports=['resnet_backbone', 'resnet_backbone.engine.mmdet_tools'],
                      allow_failed_imports=False)
model = dict(
    backbone=dict(
        _delete_=True,
        type='ResNetV1Custom',
        depth=18,
        frozen_stages=-1,
        norm_eval=False,
        init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=128),
    rpn_head=dict(in_channels=128, feat_channels=128),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=128),
        bbox_head=dict(in_channels=128, fc_out_channels=256, num_classes=3),
        mask_roi_extractor=dict(out_channels=128),
        mask_head=dict(in_channels=128, conv_out_channels=128, num_classes=3)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale={{_base_.img_scale}}, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale={{_base_.img_scale}}, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(metric=['bbox', 'segm'])
test_evaluator = val_evaluator
