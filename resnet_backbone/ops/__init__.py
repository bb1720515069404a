"""mmcv's ops without a compiler: which ``mmcv._ext`` is active, and the torchvision-backed
one (:mod:`resnet_backbone.ops.mmcv_ext`) that the import hook loads when mmcv-lite has no
compiled ops. docs/ops.md has the seam, the semantics kept and the coverage of the zoo."""
