"""mmdet's rule for class names against a COCO file's categories, in one place.

mmdet's ``CocoDataset`` (and ``CocoMetric``) number the configured classes in the
*file's* category order, whatever order they are given in, while every name a user sees
(predictions, pictures, dumps) follows the given order. So the configured classes must be
categories of the file, in the file's order; a subset is fine. The tools check it with
this (:func:`resnet_backbone.engine.training.check_class_names`); the dump's ``--rois gt``
labels go by name instead (:func:`resnet_backbone.apis.rois.class_labels`).

Example:
    >>> class_order(['cup', 'face'], ['face', 'cup', 'helmet'])
    ([], ['face', 'cup'])
    >>> class_order(['face', 'helmett'], ['face', 'cup', 'helmet'])
    (['helmett'], ['face'])
"""
from __future__ import annotations

from collections.abc import Sequence


def class_order(classes: Sequence[str], file_names: Sequence[str]
                ) -> tuple[list[str], list[str]]:
    """The configured ``classes`` against a file's category names (in the file's order).

    Returns:
        ``(missing, in_file_order)``: the classes that are not categories of the file,
        and the others in the file's order. They fit when ``missing`` is empty and
        ``in_file_order`` equals ``classes``.
    """
    classes = [str(c) for c in classes]
    missing = [c for c in classes if c not in file_names]
    in_file_order = list(dict.fromkeys(str(n) for n in file_names if n in classes))
    return missing, in_file_order
