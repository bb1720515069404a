"""Images in, model inputs out: reading, decoding and the test pipeline.

What :class:`~resnet_backbone.apis.features.FeatureExtractor` and a dump's DataLoader
workers run before the model: an image (a file, a numpy array, a PIL image or a tensor)
checked and turned into the BGR uint8 array mmdet expects (:func:`as_image_array`), then
the config's test pipeline (:func:`inference_pipeline`, :func:`build_pipeline`) on it
(:func:`load_image`). A fault of the image itself (a file that does not decode, an image
the pipeline drops) is an :class:`UnreadableImageError`; any other bad input is one line.

Example:
    >>> import numpy as np
    >>> as_image_array(np.zeros((4, 6), dtype=np.uint8)).shape  # grayscale -> 3 channels
    (4, 6, 3)
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from mmcv.transforms import Compose
from mmengine.registry import DefaultScope
from PIL import Image

from ..engine.compat import register_mmdet_modules

__all__ = ['ImageInput', 'UnreadableImageError', 'as_image_array', 'build_pipeline',
           'default_pipeline', 'inference_pipeline', 'load_image']


def default_pipeline() -> list[dict]:
    """A plain load-and-pack (no resize): the pipeline of a model that comes without a
    config."""
    return [dict(type='LoadImageFromFile'),
            dict(type='PackDetInputs', meta_keys=(
                'img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
                'flip_direction'))]


def inference_pipeline(cfg) -> list[dict]:
    """The config's test pipeline, ready for images without annotations.

    ``LoadAnnotations`` is dropped (as mmdet's ``DetInferencer`` does) and the packed
    meta keys always include the flip state.
    """
    pipeline = copy.deepcopy(cfg.test_dataloader.dataset.pipeline)
    pipeline = [t for t in pipeline if 'LoadAnnotations' not in str(t['type'])]
    for t in pipeline:
        if 'PackDetInputs' in str(t['type']) and 'meta_keys' in t:
            t['meta_keys'] = tuple(dict.fromkeys(
                tuple(t['meta_keys']) + ('img_shape', 'ori_shape', 'scale_factor', 'flip',
                                         'flip_direction')))
    return pipeline


def build_pipeline(pipeline_cfg: Sequence[dict]) -> Compose:
    """The transforms of a test pipeline config, in mmdet's scope (also in a DataLoader
    worker process, which starts without mmdet's registrations)."""
    register_mmdet_modules()
    with DefaultScope.overwrite_default_scope('mmdet'):
        return Compose(copy.deepcopy(list(pipeline_cfg)))


class UnreadableImageError(ValueError):
    """An input image that cannot be used: its file does not decode, or the test pipeline
    dropped it. A fault of that one image (a dump skips it), unlike any other error."""


#: what an image may be, wherever one is taken (see :func:`as_image_array`)
ImageInput = str | Path | np.ndarray | torch.Tensor | Image.Image


def load_image(pipeline: Compose, image: ImageInput) -> dict:
    """Run a test ``pipeline`` (:func:`build_pipeline`) on one image: ``{'inputs':
    (3, H, W) uint8 tensor, 'data_samples': DetDataSample}``, what a DataLoader worker
    hands over.

    ``image`` is anything :func:`as_image_array` accepts: a file path, a numpy array
    (BGR, as ``mmcv.imread`` returns), a PIL image or a tensor (RGB, as torchvision
    reads them), grayscale or with alpha, with pixel values 0-255. A missing file
    raises ``FileNotFoundError``; a file that does not decode, or an image the
    pipeline drops, :class:`UnreadableImageError`.
    """
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise FileNotFoundError(f'image {str(image)!r}: no such file')
        data = dict(img_path=str(image), img_id=0)
        for t in pipeline.transforms:  # as Compose does, telling decode errors apart
            try:
                data = t(data)
            except Exception as exc:  # noqa: BLE001 - only the loading step's: bad input
                if 'LoadImage' not in type(t).__name__:
                    raise  # a later transform failing is no fault of the image
                said = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise UnreadableImageError(
                    f'image {str(image)!r} cannot be decoded ({said})') from exc
            if data is None:
                break
    else:
        array = as_image_array(image)
        data = dict(img=array, img_id=0, img_path=None, ori_shape=array.shape[:2],
                    img_shape=array.shape[:2])
        transforms = [t for t in pipeline.transforms
                      if 'LoadImage' not in type(t).__name__]
        for t in transforms:
            data = t(data)
    if data is None:
        raise UnreadableImageError(f'the test pipeline dropped image {_describe(image)}')
    return data


def _describe(image) -> str:
    if isinstance(image, (str, Path)):
        return repr(str(image))
    shape = getattr(image, 'shape', None) or getattr(image, 'size', None)
    return f'({type(image).__name__}, shape {tuple(shape) if shape is not None else "?"})'


def as_image_array(image) -> np.ndarray:
    """One image as the (H, W, 3) BGR array, 0-255, that mmdet's test pipeline expects.

    Accepted, with pixel values **0-255** (the model normalises them itself):

    - numpy arrays in **BGR** order (as ``mmcv.imread``/``cv2.imread`` return): (H, W)
      grayscale, (H, W, 1), (H, W, 2) gray + alpha, (H, W, 3) BGR, (H, W, 4) BGRA;
    - PIL images (any mode that converts to RGB: L, RGB, RGBA, P, ...);
    - tensors in **RGB** order, channels first (as ``torchvision.io.read_image``
      returns): (H, W), (C, H, W) or (1, C, H, W) with C = 1, 2, 3 or 4.

    uint8 is taken as is; other integer and float dtypes must hold 0-255 values. Alpha is
    dropped and grayscale is repeated into three channels. Refused, with one line saying
    what to pass: a float image whose values lie in [0, 1] (scale it: ``img * 255``),
    negative values (already normalised: pass the raw image), values above 255 (e.g.
    16-bit: scale to 8 bits), NaN/Inf, channels-first numpy arrays, a batch of several
    images, and any other type.
    """
    order = 'BGR'
    if isinstance(image, np.ndarray):
        array, what = image, 'numpy array'
    elif isinstance(image, torch.Tensor):
        what, order = 'tensor', 'RGB'
        t = image.detach().cpu()
        if t.dim() == 4:
            if t.shape[0] != 1:
                raise ValueError(f'got a batch of {t.shape[0]} images (tensor of shape '
                                 f'{tuple(t.shape)}); pass one image at a time, e.g. '
                                 'extract(fx, list(batch))')
            t = t[0]
        if t.dim() == 3:
            if t.shape[0] not in (1, 2, 3, 4):
                raise ValueError(f'tensor images are channels first, (C, H, W) with C = 1, '
                                 f'2, 3 or 4; got shape {tuple(image.shape)} (for an (H, W, '
                                 'C) tensor pass t.permute(2, 0, 1))')
            t = t.permute(1, 2, 0)
        if t.dtype == torch.bfloat16:
            t = t.float()
        array = t.numpy()
    elif _is_pil(image):
        what, order = 'PIL', 'RGB'  # 'a PIL image', not 'a PIL image image'
        if image.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'F'):
            array = np.asarray(image)  # 16/32-bit values: checked below, not clipped
        else:
            array = np.asarray(image.convert('RGB'))
    else:
        many = ('; for several images use extract(fx, images)'
                if isinstance(image, (list, tuple)) else '')
        raise TypeError(f'cannot read an image from a {type(image).__name__}; pass a file '
                        'path, a numpy array (H, W[, C]) in BGR order, a PIL image, or a '
                        f'(C, H, W) tensor in RGB order, with pixel values 0-255{many}')
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        hint = ''
        if array.ndim == 3 and array.shape[0] in (1, 2, 3, 4):
            hint = ' (this one looks channels first: pass array.transpose(1, 2, 0))'
        elif array.ndim == 4 and array.shape[0] == 1:
            hint = ' (a batch of one: pass array[0])'
        raise ValueError(f'a {what} image must be (H, W) or (H, W, C) with C = 1, 2, 3 or '
                         f'4 channels; got shape {tuple(array.shape)}{hint}')
    if 0 in array.shape[:2]:
        raise ValueError(f'the {what} image is empty: shape {tuple(array.shape)}')
    array = _check_pixel_values(array, what)
    channels = array.shape[-1]
    if channels in (2, 4):
        array = array[..., :channels - 1]  # drop alpha
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    elif order == 'RGB':
        array = array[..., ::-1]
    return np.ascontiguousarray(array)


def _is_pil(image) -> bool:
    return isinstance(image, Image.Image)


def _check_pixel_values(array: np.ndarray, what: str) -> np.ndarray:
    """``array`` as uint8 or float32 holding 0-255 values; one line for anything else."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer)
                                   or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f'a {what} image of dtype {array.dtype} is not supported; pass '
                        'uint8 (or float) pixel values 0-255')
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ValueError(f'the {what} image holds NaN or Inf values; pass finite pixel '
                         'values 0-255')
    lo, hi = float(array.min()), float(array.max())
    if lo < 0:
        raise ValueError(f'the {what} image has negative values (min {lo:.3g}): it looks '
                         'already normalised; pass the raw pixel values 0-255 (the model '
                         'normalises them with its own mean and std)')
    if hi > 255:
        sixteen = (' (16-bit: keep the high byte, (np.asarray(img) >> 8).astype(np.uint8), '
                   'as cv2.imread does with a 16-bit file)'
                   if np.issubdtype(array.dtype, np.integer) and hi < 1 << 16 else '')
        raise ValueError(f'the {what} image has values up to {hi:.6g}, beyond 0-255 (e.g. '
                         f'16-bit): scale it to 8-bit pixel values 0-255 first{sixteen}')
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.uint8)
    if 0 < hi <= 1:
        raise ValueError(f'the {what} image is float with values in [0, 1] (max {hi:.3g}); '
                         'pass pixel values 0-255, e.g. img * 255 (values in [0, 1] would '
                         'be read as almost black)')
    return array.astype(np.float32)
