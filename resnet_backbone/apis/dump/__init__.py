"""Dumping feature maps of a whole data set, and what a dump folder holds.

- :mod:`~resnet_backbone.apis.dump.run`: the run (plan, shards, loader, batches, writers):
  :func:`dump_features` and its :class:`DumpOptions`;
- :mod:`~resnet_backbone.apis.dump.store`: arrays files, fingerprints, manifests, index;
- :mod:`~resnet_backbone.apis.dump.overlay`: bounded overlays, one colour scale per level;
- :mod:`~resnet_backbone.apis.dump.report`: the browsable ``index.html``;
- :mod:`~resnet_backbone.apis.dump.compare`: two dumps, level by level;
- :mod:`~resnet_backbone.apis.dump.rois`: RoI features per box.

The names below are imported on first use (``from resnet_backbone.apis.dump import
dump_features``): :mod:`~resnet_backbone.apis.features` imports ``rois`` from here, and
the run imports the extractor, so importing them eagerly here would be a cycle.
"""
from __future__ import annotations

from .. import lazy_names

#: name -> the module of this package that defines it
_EXPORTS = {
    'dump_features': 'run', 'DumpOptions': 'run', 'DumpSummary': 'run', 'RoISource': 'run',
    'collect_images': 'run', 'output_path': 'run', 'OVERLAY_MODES': 'overlay',
    'DTYPES': 'store', 'FORMATS': 'store', 'fingerprint': 'store', 'load_levels': 'store',
    'read_meta': 'store', 'save_levels': 'store', 'compare_dumps': 'compare',
    'write_report': 'report', 'Boxes': 'rois', 'RoIFeatures': 'rois',
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_names(__name__, _EXPORTS)
