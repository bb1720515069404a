# RetinaNet + FPN with a small ResNeXtCustom-50 (8 groups x 4 wide, base_channels 16),
# trained from scratch on the embedded shapes data set. Everything but the backbone is
# retinanet_r18_fpn_shapes.py's: with base_channels=16 the stage outputs are 64/128/256/512
# channels, the R-18 neck's in_channels.
_base_ = './retinanet_r18_fpn_shapes.py'
model = dict(
    backbone=dict(
        type='ResNeXtCustom',
        depth=50,
        groups=8,
        base_width=4,
        base_channels=16))
