# RetinaNet + FPN with a ResNetV1Custom-18 backbone, trained from scratch on the
# embedded shapes data set (128 px). Small and fast enough for a 2-core CPU.
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    '../_base_/shapes_detection.py',
    '../_base_/iter_schedule.py',  # includes mmdet's default_runtime
]
# Registers ResNetV1Custom for any tool that reads this file, mmdet's own tools/train.py
# included (this project's tools import the package anyway).
# resnet_backbone.engine.mmdet_tools lets mmdet's tools (test.py, train.py --resume) read
# our Runner checkpoints under torch's weights_only default.
custom_imports = dict(imports=['resnet_backbone', 'resnet_backbone.engine.mmdet_tools'],
                      allow_failed_imports=False)
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    backbone=dict(
        _delete_=True,
        type='ResNetV1Custom',
        depth=18,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,  # from scratch: nothing to freeze, BN statistics must train
        norm_eval=False,
        norm_cfg=norm_cfg,
        init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=128, start_level=1,
              add_extra_convs='on_input', num_outs=5),
    bbox_head=dict(num_classes=3, in_channels=128, feat_channels=128, stacked_convs=2))
