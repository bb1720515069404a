"""Pretrained weights from every ecosystem: dialect detection, key mapping, strict loading.

Dialects (``source``) and how their keys map onto ``ResNetV1Custom``:

- ``torchvision`` / ``timm`` (classic stem) / ``mmdet`` bare backbone: the same layout
  (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``, ``layer1.0.downsample.0/1``);
  the classifier (``fc.*``) is dropped. Their ResNeXt files (``resnext50_32x4d``, mmdet's
  ``ResNeXt``) have the same keys; a grouped ``layer1.0.conv2`` implies ``groups``,
  ``base_width`` and ``base_channels`` (``ResNeXtCustom``). torchvision and timm files
  are told apart by the module names a saved state dict records (timm's
  ``act1``/``global_pool``, torchvision's ``relu``/``avgpool``); a file without them is
  reported as
  ``'torchvision/timm (identical keys)'``.
- ``timm`` deep stem (``resnet50c/d``): ``conv1 = Sequential(conv, bn, act, conv, bn,
  act, conv)`` plus a top-level ``bn1``. The documented mapping:

  ==================  ==================
  timm                ResNetV1Custom
  ==================  ==================
  ``conv1.0.weight``  ``stem.0.weight``
  ``conv1.1.*``       ``stem.1.*``
  ``conv1.3.weight``  ``stem.3.weight``
  ``conv1.4.*``       ``stem.4.*``
  ``conv1.6.weight``  ``stem.6.weight``
  ``bn1.*``           ``stem.7.*``
  ==================  ==================

  Its ``avg_down`` shortcut is ``(pool or Identity, conv, bn)``: the same indices as
  mmdet's ``(AvgPool, conv, norm)``, so ``layerN.0.downsample.1/2`` map 1:1.
- ``detectron2``: ``stem.conv1.weight`` -> ``conv1.weight``, ``stem.conv1.norm.*`` ->
  ``bn1.*``, ``resN`` -> ``layer{N-1}``, ``convK.norm`` -> ``bnK``, ``shortcut`` ->
  ``downsample.0``, ``shortcut.norm`` -> ``downsample.1``. Its ImageNet (MSRA) weights
  put the stride in the first 1x1 conv: ``style='caffe'``. They are pickled numpy
  dicts (``.pkl``), read only on explicit request (pickle can run code).
- ``mmpretrain``: classifier checkpoints, ``backbone.`` prefix and a ``head``; its
  V1c/V1d stems are ConvModules (``stem.0.conv``/``stem.0.bn`` -> ``stem.0``/``stem.1``).
- ``mmdet``: detector checkpoints: the ``backbone.`` part of ``state_dict``.

- ResNet v2 (``ResNetV2Custom``; keys ``conv1``, ``layerS.U.bn0`` (preact), ``conv1``,
  ``bn1``, ``conv2``, ``bn2``, ``conv3``, ``downsample.0`` (projection), ``post_norm``):

  - ``timm`` ``resnetv2_50/101/...`` (BN variants): ``stem.conv`` -> ``conv1``,
    ``stages.S.blocks.U.norm1/2/3`` -> ``layer{S+1}.U.bn0/1/2``, ``downsample.conv`` ->
    ``downsample.0``, ``norm`` -> ``post_norm``. Implies ``stride_in='first'``.
  - ``keras`` ``ResNet50V2/101V2/152V2`` weight files (``.h5`` with layer names, as the
    published ImageNet files, or Keras 3 ``.weights.h5``, which stores layers by
    position: they are matched in ``keras.applications``' layer order, as Keras's own
    loader does): ``convS_blockU_preact_bn`` -> ``layer{S-1}.{U-1}.bn0``, ``_1_conv``
    -> ``conv1``, ``_1_bn`` -> ``bn1``, ``_2_*`` -> ``conv2``/``bn2``, ``_3_conv`` ->
    ``conv3``, ``_0_conv`` -> ``downsample.0``, ``post_bn`` -> ``post_norm``; kernels
    HWIO -> OIHW. Implies ``stride_in='last'``, ``stem_pool_padding='zeros'``. Needs
    ``h5py``.
  - ``tf-slim`` ``resnet_v2_50/101/152/200`` variables (an ``.npz`` whose keys are the
    variable names with ``/`` or ``__`` separators, or a TF checkpoint prefix read
    through TensorFlow): ``blockS/unit_U/bottleneck_v2/preact`` -> ``layerS.{U-1}.bn0``,
    ``convK/weights`` -> ``convK.weight``, ``convK/BatchNorm`` -> ``bnK``, ``conv3/biases``
    -> ``conv3.bias``, ``shortcut`` -> ``downsample.0``, ``postnorm`` -> ``post_norm``.
    Implies ``stride_in='last'``, ``stem_pool_padding='same'``.

``torchvision://``, ``open-mmlab://`` and URL names are read from the file mmengine's
loader uses (torch.hub's cache, see :func:`cached_checkpoint_file`), safely; only a name
not cached there is fetched through mmengine.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from mmengine.logging import print_log
from mmengine.runner import checkpoint as mmckpt
from torch import nn

from ..spec import ARCH_LAYOUT, allowed, check_choice

# one checker of checkpoint files, shared with the tools' pre-flight checks
from .checkpoint_io import (
    CheckpointReadError,  # noqa: F401 - re-exported: weights.CheckpointReadError
    runner_checkpoint_globals,
    unreadable_checkpoint,
)
from .checkpoint_io import is_torch_save_file as _is_torch_save_file

SOURCES = ('torchvision', 'timm', 'detectron2', 'mmpretrain', 'mmdet', 'keras', 'tf-slim')
_HEAD = re.compile(r'^(fc|head|classifier)\.')
_TIMM_DEEP_STEM = {'conv1.0.': 'stem.0.', 'conv1.1.': 'stem.1.', 'conv1.3.': 'stem.3.',
                   'conv1.4.': 'stem.4.', 'conv1.6.': 'stem.6.', 'bn1.': 'stem.7.'}
_MMPRETRAIN_STEM = {'stem.0.conv.': 'stem.0.', 'stem.0.bn.': 'stem.1.',
                    'stem.1.conv.': 'stem.3.', 'stem.1.bn.': 'stem.4.',
                    'stem.2.conv.': 'stem.6.', 'stem.2.bn.': 'stem.7.'}
_DETECTION_PARTS = ('neck.', 'rpn_head.', 'roi_head.', 'bbox_head.', 'mask_head.')
_URL_PREFIXES = ('torchvision://', 'open-mmlab://', 'openmmlab://', 'mmcls://',
                 'mmpretrain://', 'http://', 'https://', 's3://', 'modelzoo://')


# ---------------------------------------------------------------- reading files
def read_checkpoint(path: str | Path, *, allow_pickle: bool = False) -> dict:
    """Read a checkpoint from a local file, safely.

    ``.pth``/``.pt``/``.bin`` go through ``torch.load(weights_only=True)`` (with the
    mmengine Runner allow-list). ``.pkl`` (detectron2) is only opened with
    ``allow_pickle=True`` and warns, because unpickling can run arbitrary code.

    A file that cannot be read (empty, truncated, random bytes, refused objects) raises
    :class:`CheckpointReadError`, one line naming the file; torch's advice to retry
    with ``weights_only=False`` is never passed on.
    """
    path_str = str(path)
    if path_str.startswith(_URL_PREFIXES):
        # the file mmengine's loader would read: torch.hub's cache (or mmengine's home)
        local = cached_checkpoint_file(path_str)
        if local is not None and local.is_file():
            return read_checkpoint(local, allow_pickle=allow_pickle)
        # not cached: mmengine downloads it into that cache; offline, that fails
        from mmengine.runner.checkpoint import CheckpointLoader
        try:
            return CheckpointLoader.load_checkpoint(path_str, map_location='cpu',
                                                    logger='silent')
        except Exception as exc:  # noqa: BLE001 - any fetch failure gets the same advice
            cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
            where = f' (its local copy would be {local})' if local is not None else ''
            raise FileNotFoundError(
                f'checkpoint {path_str!r} could not be fetched ({cause}){where}; download '
                'it where there is network access, convert it with '
                "tools/convert_weights.py, and set checkpoint='path/to/file.pth'") from None
    path = Path(path)
    if _is_tf_checkpoint(path):
        return read_tf_checkpoint(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path_str!r}: no such file')
    if path.suffix == '.h5':
        return read_keras_h5(path)
    if path.suffix == '.npz':
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except Exception as exc:  # noqa: BLE001 - any parse failure: one line naming the file
            if isinstance(exc, OSError) and exc.filename is not None:
                raise
            raise unreadable_checkpoint(path_str, exc) from None
    if path.suffix == '.pkl' and not _is_torch_save_file(path):
        if not allow_pickle:
            raise PermissionError(
                f'{path_str} is a pickle (.pkl): opening it can run arbitrary code; pass '
                'allow_pickle=True (tools: --allow-pickle) only for files you trust')
        warnings.warn(f'unpickling {path_str}: pickle can run code, only open trusted files',
                      UserWarning, stacklevel=2)
        try:
            with open(path, 'rb') as f:
                return pickle.load(f, encoding='latin1')
        except Exception as exc:  # noqa: BLE001 - any parse failure: one line naming the file
            if isinstance(exc, OSError) and exc.filename is not None:
                raise  # permission denied, a folder, ...: the message names the file
            raise unreadable_checkpoint(path_str, exc) from None
    try:
        with runner_checkpoint_globals():
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any parse failure: one line naming the file
        if isinstance(exc, OSError) and exc.filename is not None:
            raise  # permission denied, a folder, ...: the message names the file
        raise unreadable_checkpoint(path_str, exc) from None


def _is_tf_checkpoint(path: Path) -> bool:
    """A TF checkpoint prefix (``model.ckpt``, its ``.index`` beside it) or its ``.index``."""
    if path.suffix == '.index' and path.is_file():
        return True
    return not path.exists() and path.with_name(path.name + '.index').is_file()


def read_tf_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """Every variable of a TF checkpoint (``tf.train.load_checkpoint``), by name.

    Needs TensorFlow; without it, one line says how to export an ``.npz`` instead.
    """
    prefix = str(path)[:-len('.index')] if str(path).endswith('.index') else str(path)
    try:
        import tensorflow as tf  # optional: only to read a TF checkpoint
    except ImportError:
        raise ImportError(
            f'{prefix} is a TensorFlow checkpoint: reading it needs tensorflow (pip install '
            'tensorflow), or export it once where TF is installed: r = tf.train.'
            f'load_checkpoint({prefix!r}); np.savez("weights.npz", **{{k: r.get_tensor(k) '
            'for k in r.get_variable_to_shape_map()}}) and pass the .npz') from None
    reader = tf.train.load_checkpoint(prefix)
    return {k: np.asarray(reader.get_tensor(k)) for k in reader.get_variable_to_shape_map()}


#: Keras 3 ``.weights.h5`` stores a layer's variables by position (``vars/0``, ...)
_KERAS_VARS = {'conv': ('kernel', 'bias'),
               'bn': ('gamma', 'beta', 'moving_mean', 'moving_variance')}


def read_keras_h5(path: str | Path) -> dict[str, np.ndarray]:
    """A Keras weight file as ``{'<layer>/<variable>': array}`` (e.g.
    ``'conv2_block1_1_conv/kernel'``).

    Two layouts: the HDF5 one with layer names (``model.save('m.h5')``, Keras 2's
    ``save_weights``, the published ``keras.applications`` files), and Keras 3's
    ``.weights.h5``, which names layers by class and position (``layers/conv2d_3/vars/0``):
    those come back as ``'#conv2d_3/kernel'``, and :func:`convert` matches them to the
    ResNet v2 layer order. Needs ``h5py``.
    """
    try:
        import h5py  # optional: only to read Keras weight files
    except ImportError:
        raise ImportError(f'{path} is a Keras .h5 weight file: reading it needs h5py; fix: '
                          'pip install h5py') from None
    out: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, 'r') as f:
            root = f['model_weights'] if 'model_weights' in f else f
            if 'layer_names' in root.attrs:
                for layer in root.attrs['layer_names']:
                    layer = layer.decode() if isinstance(layer, bytes) else str(layer)
                    g = root[layer]
                    for wname in g.attrs.get('weight_names', []):
                        wname = wname.decode() if isinstance(wname, bytes) else str(wname)
                        key = wname.split(':')[0]
                        if not key.startswith(layer + '/'):
                            key = f'{layer}/{key.split("/")[-1]}'
                        out[key] = np.asarray(g[wname])
            elif 'layers' in root:
                for name, g in root['layers'].items():
                    if 'vars' not in g:
                        continue
                    kind = 'bn' if name.startswith('batch_normalization') else \
                        'conv' if name.startswith('conv2d') else None
                    for i in range(len(g['vars'])):
                        var = _KERAS_VARS[kind][i] if kind is not None else f'var{i}'
                        out[f'#{name}/{var}'] = np.asarray(g['vars'][str(i)])
    except (OSError, KeyError, IndexError) as exc:
        raise unreadable_checkpoint(str(path), exc) from None
    if not out:
        raise unreadable_checkpoint(str(path), ValueError('no Keras layer weights in it'))
    return out


def cached_checkpoint_file(name: str) -> Path | None:
    """The local file that mmengine's checkpoint loader reads for a URL-like ``name``
    (whether or not it is there yet), or None for a scheme it does not cache this way.

    The same lookup as ``mmengine.runner.checkpoint``: ``torchvision://NAME`` (and
    ``modelzoo://``) through ``get_torchvision_models()``, ``open-mmlab://NAME`` through
    ``get_external_models()`` (deprecated names renamed; a relative entry lives in
    mmengine's home folder), and every URL in ``<torch.hub.get_dir()>/checkpoints``
    under the URL's file name, as ``torch.hub.load_state_dict_from_url`` keeps it
    (``TORCH_HOME`` moves it).
    """
    scheme, _, model = name.partition('://')
    if scheme in ('torchvision', 'modelzoo'):
        url = mmckpt.get_torchvision_models().get(model)
    elif scheme in ('open-mmlab', 'openmmlab'):
        model = mmckpt.get_deprecated_model_names().get(model, model)
        url = mmckpt.get_external_models().get(model)
        if url is not None and not url.startswith(('http://', 'https://')):
            return Path(mmckpt._get_mmengine_home()) / url
    elif scheme in ('http', 'https'):
        url = name
    else:
        return None
    if url is None:
        return None
    return Path(torch.hub.get_dir()) / 'checkpoints' / os.path.basename(urlparse(url).path)


def unwrap_state_dict(ckpt: Mapping) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint (``state_dict``/``model`` keys, ``module.``
    prefixes, numpy arrays), as tensors."""
    sd = ckpt
    for key in ('state_dict', 'model', 'module'):
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
            break
    out = {}
    for k, v in sd.items():
        if not isinstance(k, str):
            continue
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        if isinstance(v, torch.Tensor):
            out[k[len('module.'):] if k.startswith('module.') else k] = v
    return out


# ---------------------------------------------------------------- dialects
class UnknownDialectError(ValueError):
    """No known ResNet layout in a checkpoint's keys. :meth:`message` words the fix for
    the caller: ``source=...`` for the API, ``--source`` for the tools."""

    def __init__(self, keys: list[str], how: str = 'source=...') -> None:
        self.keys = keys
        super().__init__(self.message(how))

    def message(self, how: str) -> str:
        resnet_like = any(re.search(r'(^|\.)(layer\d|res\d)\.', k) for k in self.keys)
        what = ('its stem keys match no known ResNet layout' if resnet_like else
                'it does not look like a ResNet checkpoint (no conv1, stem or layer1 keys)')
        return (f'cannot tell the dialect of this checkpoint from its keys (e.g. '
                f'{self.keys[:3]}): {what}; if it is a ResNet, pass {how} (allowed values: '
                f'{allowed(SOURCES, quote=False)})')


def module_names(ckpt) -> set[str]:
    """Module names recorded in a saved state dict (``state_dict()._metadata``, which
    ``torch.save`` keeps): they tell libraries apart whose parameter names are equal,
    e.g. timm's ``act1``/``global_pool`` against torchvision's ``relu``/``avgpool``.
    Empty when the file does not carry them."""
    sd = ckpt
    for key in ('state_dict', 'model', 'module'):
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
            break
    meta = getattr(sd, '_metadata', None)
    return {k[len('module.'):] if k.startswith('module.') else k for k in meta} \
        if isinstance(meta, Mapping) else set()


#: the source label of a classic-layout classifier file that records no module names:
#: torchvision's and timm's resnet18..152 have identical keys and identical weights layout
AMBIGUOUS_TV_TIMM = 'torchvision/timm (identical keys)'


def detect_source(state_dict: Mapping[str, torch.Tensor],
                  modules: set[str] | None = None) -> str:
    """The dialect of ``state_dict`` (after :func:`unwrap_state_dict`), from its keys and,
    where keys are equal across libraries, the module names of :func:`module_names`."""
    keys = list(state_dict)
    modules = modules or set()
    if any(k.startswith(('conv1_conv/', '#conv2d')) for k in keys):
        return 'keras'
    if any(_TF_SLIM_KEY.match(k) for k in keys):
        return 'tf-slim'
    if 'stem.conv.weight' in state_dict and any(k.startswith('stages.') for k in keys):
        return 'timm'  # timm's resnetv2_*
    if any(k.startswith('backbone.') for k in keys):
        return 'mmdet' if any(k.startswith(_DETECTION_PARTS) for k in keys) else 'mmpretrain'
    if 'stem.conv1.weight' in state_dict or any(k.startswith('res2.') for k in keys):
        return 'detectron2'
    if 'conv1.0.weight' in state_dict:
        return 'timm'
    if 'conv1.weight' in state_dict and ('act1' in modules or 'global_pool' in modules):
        return 'timm'  # timm's classic-stem resnets: torchvision's keys, its own modules
    if 'conv1.weight' in state_dict and ('fc.weight' in state_dict or 'avgpool' in modules):
        return 'torchvision'
    if 'conv1.weight' in state_dict or 'stem.0.weight' in state_dict:
        return 'mmdet'  # a bare mmdet ResNet / ResNetV1Custom state dict
    raise UnknownDialectError(keys)


def source_label(source: str, state_dict: Mapping[str, torch.Tensor],
                 modules: set[str]) -> str:
    """``source`` as reports print it: a torchvision-layout file that records no module
    names may as well be timm's (the keys are identical), and is labelled so."""
    if source == 'torchvision' and not modules and 'fc.weight' in state_dict:
        return AMBIGUOUS_TV_TIMM
    return source


def _rename(key: str, table: Mapping[str, str]) -> str:
    for old, new in table.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def _from_detectron2(key: str) -> str:
    if key.startswith('stem.conv1.norm.'):
        return 'bn1.' + key[len('stem.conv1.norm.'):]
    if key.startswith('stem.'):
        return key[len('stem.'):]
    m = re.match(r'^res(\d)\.(\d+)\.(.*)$', key)
    if not m:
        return key
    layer, block, rest = int(m.group(1)) - 1, m.group(2), m.group(3)
    rest = re.sub(r'^conv(\d)\.norm\.', r'bn\1.', rest)
    rest = re.sub(r'^shortcut\.norm\.', 'downsample.1.', rest)
    rest = re.sub(r'^shortcut\.', 'downsample.0.', rest)
    return f'layer{layer}.{block}.{rest}'


@dataclass
class Converted:
    """Result of :func:`convert`: our keys, the dialect, and what the source implies."""

    state_dict: dict[str, torch.Tensor]
    source: str
    implied: dict = field(default_factory=dict)  # depth, stem_type, avg_down, style, groups
    dropped: list[str] = field(default_factory=list)  # classifier / non-backbone keys
    label: str = ''  # the source as reports print it (see source_label)

    def __post_init__(self) -> None:
        self.label = self.label or self.source


def convert(state_dict: Mapping, source: str | None = None,
            target_cfg: Mapping | None = None) -> Converted:
    """Map a checkpoint's keys from ``source`` (auto-detected if None) to ours.

    ``target_cfg`` (ResNetV1Custom kwargs) only informs the norm-layer names: GN targets
    get ``gnK`` instead of ``bnK``.
    """
    modules = module_names(state_dict)
    sd = unwrap_state_dict(state_dict)
    label = None
    if source is None:
        source = detect_source(sd, modules)
        label = source_label(source, sd, modules)
    else:
        check_choice('source', source, SOURCES, quote=False)
    v2 = _convert_v2(sd, source)
    if v2 is not None:
        return v2
    out, dropped = {}, []
    prefixed = source in ('mmdet', 'mmpretrain') and any(k.startswith('backbone.') for k in sd)
    deep_timm = source == 'timm' and 'conv1.0.weight' in sd
    for key, value in sd.items():
        if prefixed:
            if not key.startswith('backbone.'):
                dropped.append(key)
                continue
            key = key[len('backbone.'):]
        if _HEAD.match(key):
            dropped.append(key)
            continue
        if deep_timm:
            key = _rename(key, _TIMM_DEEP_STEM)
        elif source == 'mmpretrain':
            key = _rename(key, _MMPRETRAIN_STEM)
        elif source == 'detectron2':
            key = _from_detectron2(key)
        out[key] = value
    if ((target_cfg or {}).get('norm_cfg') or {}).get('type') == 'GN':
        out = {re.sub(r'(^|\.)bn(\d)\.', r'\1gn\2.', k): v for k, v in out.items()}
    return Converted(out, source, infer_architecture(out, source), dropped, label or source)


# ---------------------------------------------------------------- ResNet v2 dialects
_TF_SLIM_KEY = re.compile(r'^resnet_v2_\d+(/|__)')
_BN_VARS = {'gamma': 'weight', 'beta': 'bias', 'moving_mean': 'running_mean',
            'moving_variance': 'running_var'}
_CONV_VARS = {'kernel': 'weight', 'weights': 'weight', 'bias': 'bias', 'biases': 'bias'}
#: what each v2 dialect implies beyond the keys (the load report says so)
V2_IMPLIED = {'timm': dict(stride_in='first', stem_pool_padding='symmetric'),
              'keras': dict(stride_in='last', stem_pool_padding='zeros'),
              'tf-slim': dict(stride_in='last', stem_pool_padding='same')}


def _hwio(value: torch.Tensor) -> torch.Tensor:
    """A TF/Keras conv kernel ``[kh, kw, in, out]`` as PyTorch's ``[out, in, kh, kw]``."""
    return value.permute(3, 2, 0, 1).contiguous() if value.dim() == 4 else value


def _v2_var(key: str, module: str, var: str) -> str | None:
    table = _BN_VARS if var in _BN_VARS else _CONV_VARS
    return f'{module}.{table[var]}' if var in table else None


def _from_timm_v2(key: str) -> str | None:
    """timm resnetv2 key -> ours (None: not part of the backbone)."""
    if key.startswith('head.'):
        return None
    if key.startswith('stem.conv.'):
        return 'conv1.' + key[len('stem.conv.'):]
    if key.startswith('norm.'):
        return 'post_norm.' + key[len('norm.'):]
    m = re.match(r'^stages\.(\d+)\.blocks\.(\d+)\.(.*)$', key)
    if not m:
        return key  # left as is: the strict load reports it
    rest = m.group(3)
    rest = re.sub(r'^norm([123])\.', lambda n: f'bn{int(n.group(1)) - 1}.', rest)
    rest = re.sub(r'^downsample\.conv\.', 'downsample.0.', rest)
    return f'layer{int(m.group(1)) + 1}.{m.group(2)}.{rest}'


def _keras_module(layer: str) -> str | None:
    """Keras ResNetV2 layer name -> our module name (None: not the backbone's)."""
    if layer == 'conv1_conv':
        return 'conv1'
    if layer == 'post_bn':
        return 'post_norm'
    m = re.match(r'^conv(\d)_block(\d+)_(preact_bn|[0-3]_conv|[12]_bn)$', layer)
    if not m:
        return None
    part = m.group(3)
    name = {'preact_bn': 'bn0', '0_conv': 'downsample.0'}.get(part) or \
        ('conv' if part.endswith('conv') else 'bn') + part[0]
    return f'layer{int(m.group(1)) - 1}.{int(m.group(2)) - 1}.{name}'


def keras_v2_layer_order(num_bn: int) -> tuple[list[str], list[str]]:
    """The Conv2D and BatchNormalization layer names of a ``keras.applications`` ResNet v2,
    in the model's layer order (Keras 3's ``.weights.h5`` stores them in that order):
    per unit preact_bn, 1_conv, 1_bn, 2_conv, 2_bn, [0_conv,] 3_conv; then post_bn.

    Args:
        num_bn: BatchNormalization layers in the file (3 per unit + 1); tells the depth.
    """
    units = (num_bn - 1) // 3
    layout = next((c for c in _V2_UNITS if sum(c) == units), None)
    if layout is None:
        raise ValueError(f'a Keras ResNet v2 weight file with {num_bn} BatchNormalization '
                         f'layers ({units} units) matches no ResNet v2 depth (50, 101, 152)')
    convs, bns = ['conv1_conv'], []
    for s, n in enumerate(layout):
        for u in range(n):
            p = f'conv{s + 2}_block{u + 1}'
            bns += [f'{p}_preact_bn', f'{p}_1_bn', f'{p}_2_bn']
            convs += [f'{p}_1_conv', f'{p}_2_conv'] + ([f'{p}_0_conv'] if u == 0 else []) \
                + [f'{p}_3_conv']
    return convs, bns + ['post_bn']


#: units per stage of ResNet v2 depths 50/101/152/200
_V2_UNITS = ((3, 4, 6, 3), (3, 4, 23, 3), (3, 8, 36, 3), (3, 24, 36, 3))


def _keras_named(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Keras 3 positional file's ``'#conv2d_3/kernel'`` keys as layer names."""
    if not any(k.startswith('#') for k in sd):
        return dict(sd)

    def index(name: str) -> int:
        tail = name.rsplit('_', 1)[-1]
        return int(tail) if tail.isdigit() and name.rsplit('_', 1)[0] in (
            'conv2d', 'batch_normalization') else 0
    layers = {k.split('/')[0][1:] for k in sd if k.startswith('#')}
    convs = sorted((n for n in layers if n.startswith('conv2d')), key=index)
    bns = sorted((n for n in layers if n.startswith('batch_normalization')), key=index)
    conv_names, bn_names = keras_v2_layer_order(len(bns))
    if len(convs) != len(conv_names):
        raise ValueError(f'a Keras ResNet v2 weight file with {len(bns)} BatchNormalization '
                         f'layers has {len(conv_names)} Conv2D layers, this one {len(convs)}')
    rename = dict(zip(convs, conv_names)) | dict(zip(bns, bn_names))
    out = {}
    for k, v in sd.items():
        layer, _, var = k[1:].partition('/') if k.startswith('#') else ('', '', '')
        out[f'{rename[layer]}/{var}' if layer in rename else k] = v
    return out


def _convert_v2(sd: Mapping[str, torch.Tensor], source: str) -> Converted | None:
    """A ResNet v2 checkpoint (timm resnetv2, Keras, TF-slim) in our keys, or None when
    ``sd`` is not one."""
    if source == 'timm' and not ('stem.conv.weight' in sd
                                 or any(k.startswith('stages.') for k in sd)):
        return None
    if source not in ('timm', 'keras', 'tf-slim'):
        return None
    out, dropped = {}, []
    if source == 'timm':
        for key, value in sd.items():
            new = _from_timm_v2(key)
            if new is None:
                dropped.append(key)
            else:
                out[new] = value
    elif source == 'keras':
        for key, value in _keras_named(sd).items():
            layer, _, var = key.partition('/')
            module = _keras_module(layer)
            new = _v2_var(key, module, var) if module is not None else None
            if new is None:
                dropped.append(key)  # the classifier ('predictions'), optimizer state
            else:
                out[new] = _hwio(value)
    else:  # tf-slim
        for key, value in sd.items():
            new = _from_tf_slim(key.replace('__', '/'))
            if new is None:
                dropped.append(key)
            else:
                out[new] = _hwio(value)
        # batch_norm_scale=False (older TF-slim arg scopes): no gamma, i.e. gamma = 1
        for k in [k for k in out if k.endswith('.running_mean')]:
            weight = k[:-len('running_mean')] + 'weight'
            if weight not in out:
                out[weight] = torch.ones_like(out[k])
    implied = infer_v2_architecture(out, source)
    label = f"{source} (implies {', '.join(f'{k}={v!r}' for k, v in V2_IMPLIED[source].items())})"
    return Converted(out, source, implied, dropped, label)


def _from_tf_slim(key: str) -> str | None:
    """TF-slim ``resnet_v2_N/...`` variable name -> ours (None: not the backbone's)."""
    parts = key.split('/')
    if not _TF_SLIM_KEY.match(key) or len(parts) < 3:
        return None  # global_step and the like
    parts = parts[1:]
    var = parts[-1]
    if parts[0] in ('logits', 'predictions') or var not in {**_BN_VARS, **_CONV_VARS} \
            or any(p in ('Momentum', 'ExponentialMovingAverage', 'Adam', 'Adam_1',
                         'RMSProp', 'RMSProp_1') for p in parts):
        return None
    if parts[0] == 'conv1' and len(parts) == 2:
        return _v2_var(key, 'conv1', var)
    if parts[0] == 'postnorm' and len(parts) == 2:
        return _v2_var(key, 'post_norm', var)
    m = re.match(r'^block(\d)/unit_(\d+)/bottleneck_v2/(.*)$', '/'.join(parts))
    if not m:
        return key
    unit = f'layer{m.group(1)}.{int(m.group(2)) - 1}'
    rest = m.group(3).split('/')
    if rest[0] == 'preact' and len(rest) == 2:
        return _v2_var(key, f'{unit}.bn0', var)
    if rest[0] == 'shortcut' and len(rest) == 2:
        return _v2_var(key, f'{unit}.downsample.0', var)
    c = re.match(r'^conv(\d)$', rest[0])
    if c and len(rest) == 2:
        return _v2_var(key, f'{unit}.conv{c.group(1)}', var)
    if c and len(rest) == 3 and rest[1] == 'BatchNorm':
        return _v2_var(key, f'{unit}.bn{c.group(1)}', var)
    return key


def infer_v2_architecture(sd: Mapping[str, torch.Tensor], source: str) -> dict:
    """What converted ResNet v2 keys imply: ``variant='v2'``, depth, widths, biases and
    the dialect's layout (:data:`V2_IMPLIED`)."""
    implied: dict = {'variant': 'v2'}
    blocks = []
    for i in range(1, 5):
        ids = {int(m.group(1)) for k in sd if (m := re.match(rf'^layer{i}\.(\d+)\.', k))}
        if ids:
            blocks.append(max(ids) + 1)
    for depth, counts in zip((50, 101, 152, 200), _V2_UNITS):
        if tuple(blocks) == counts:
            implied['depth'] = depth
    implied.update(V2_IMPLIED[source])
    if 'conv1.weight' in sd:
        implied['stem_channels'] = int(sd['conv1.weight'].shape[0])
    if 'layer1.0.conv1.weight' in sd:
        implied['base_channels'] = int(sd['layer1.0.conv1.weight'].shape[0])
    implied['conv_bias'] = 'layer1.0.conv3.bias' in sd
    return implied


def infer_architecture(sd: Mapping[str, torch.Tensor], source: str) -> dict:
    """depth, stem_type, avg_down (and style for detectron2) implied by converted keys."""
    implied: dict = {'stem_type': 'deep' if 'stem.0.weight' in sd else 'classic'}
    implied['avg_down'] = any(re.match(r'^layer\d\.0\.downsample\.2\.', k) for k in sd)
    if source == 'detectron2':
        implied['style'] = 'caffe'  # MSRA weights: stride_in_1x1
    blocks = []
    for i in range(1, 5):
        ids = {int(m.group(1)) for k in sd if (m := re.match(rf'^layer{i}\.(\d+)\.', k))}
        if ids:
            blocks.append(max(ids) + 1)
    bottleneck = any(k.startswith('layer1.0.conv3.') for k in sd)
    for depth, (kind, counts) in ARCH_LAYOUT.items():
        if tuple(counts[:len(blocks)]) == tuple(blocks) and (kind == 'bottleneck') == bottleneck:
            implied['depth'] = depth
            break
    if 'stem.0.weight' in sd:
        implied['stem_channels'] = int(sd['stem.6.weight'].shape[0]) \
            if 'stem.6.weight' in sd else None
    elif 'conv1.weight' in sd:
        implied['stem_channels'] = int(sd['conv1.weight'].shape[0])
        if sd['conv1.weight'].shape[-1] == 3:
            implied['stem_type'] = 'small'
    if 'layer1.0.conv1.weight' in sd:
        implied['base_channels'] = int(sd['layer1.0.conv1.weight'].shape[0])
    conv2, conv3 = sd.get('layer1.0.conv2.weight'), sd.get('layer1.0.conv3.weight')
    if conv2 is not None and conv3 is not None and conv2.shape[0] != conv2.shape[1]:
        # a grouped 3x3 (ResNeXt): (width, width / groups, 3, 3); layer1's planes are
        # base_channels, so its width is base_width * groups (mmdet's formula)
        implied['groups'] = int(conv2.shape[0] // conv2.shape[1])
        implied['base_width'] = int(conv2.shape[1])
        implied['base_channels'] = int(conv3.shape[0]) // 4
    return implied


# ---------------------------------------------------------------- loading + report
@dataclass(repr=False)
class LoadReport:
    """What a load did: keys loaded, missing, unexpected, mismatched, and coverage.

    ``str``/``repr`` give a short summary (the counts and the first few missing,
    unexpected and mismatched names), not every key; :meth:`summary` and the lists
    (``report.loaded``, ``.missing``, ...) hold them all.
    """

    source: str
    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple, tuple]]  # key, checkpoint shape, model shape
    coverage: float  # % of the model's parameter + buffer elements that were loaded
    #: modules no checkpoint has (e.g. ResNetV2Custom's level norms): left as initialised,
    #: neither missing nor counted in the coverage
    fresh: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __repr__(self) -> str:
        shown = ''.join(f'; {what} {_some(keys)}' for what, keys in (
            ('missing', self.missing), ('unexpected', self.unexpected),
            ('mismatched', [k for k, _, _ in self.mismatched]),
            ('left as initialised', self.fresh)) if keys)
        return (f'<LoadReport {self.source}: {len(self.loaded)} loaded, '
                f'{len(self.missing)} missing, {len(self.unexpected)} unexpected, '
                f'{len(self.mismatched)} mismatched; coverage {self.coverage:.2f}%{shown}; '
                'every key: .summary() or .loaded/.missing/.unexpected/.mismatched>')

    __str__ = __repr__

    def summary(self) -> str:
        lines = [f'load report ({self.source}): {len(self.loaded)} tensors loaded, '
                 f'{len(self.missing)} missing, {len(self.unexpected)} unexpected, '
                 f'{len(self.mismatched)} shape mismatches; coverage {self.coverage:.2f}% '
                 'of parameters and buffers']
        if self.fresh:
            lines.append('  not in any checkpoint, left as initialised: '
                         + ', '.join(self.fresh))
        if self.missing:
            lines.append('  missing: ' + ', '.join(self.missing))
        if self.unexpected:
            lines.append('  unexpected: ' + ', '.join(self.unexpected))
        for key, got, want in self.mismatched:
            lines.append(f'  shape mismatch: {key}: checkpoint {got} vs model {want}')
        return '\n'.join(lines)


def _some(items: list, n: int = 3) -> str:
    """``repr`` of a list, its first ``n`` entries only when it is longer."""
    if len(items) <= n:
        return repr(list(items))
    return repr(list(items[:n]))[:-1] + f', ... {len(items) - n} more]'


class IncompleteCheckpointError(RuntimeError):
    """A strict load found missing, unexpected or mismatched keys (the report says which).

    The message is one line: the file (when known), the counts, and the first few keys
    of each kind; ``report.summary()`` lists them all.
    """

    def __init__(self, report: LoadReport, checkpoint: str | None = None) -> None:
        self.report = report
        self.checkpoint = checkpoint
        parts = []
        if report.missing:
            parts.append(f'missing {_some(report.missing)}')
        if report.unexpected:
            parts.append(f'unexpected {_some(report.unexpected)}')
        if report.mismatched:
            shown = [f'{k}: checkpoint {tuple(a)} vs model {tuple(b)}'
                     for k, a, b in report.mismatched[:3]]
            more = len(report.mismatched) - len(shown)
            parts.append('shape mismatch ' + ', '.join(shown)
                         + (f', ... {more} more' if more else ''))
        where = f'{checkpoint}: ' if checkpoint else ''
        super().__init__(
            f'{where}strict load from {report.source} weights failed (coverage '
            f'{report.coverage:.2f}%; {len(report.missing)} missing, {len(report.unexpected)} '
            f'unexpected, {len(report.mismatched)} shape mismatches): ' + '; '.join(parts))


# BatchNorm's step counter is not a weight: checkpoints from other libraries lack it.
_OPTIONAL = re.compile(r'(^|\.)num_batches_tracked$')


def load_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                    source: str = 'ours', strict: bool = True, log: bool = True,
                    checkpoint: str | None = None) -> LoadReport:
    """Load converted weights into ``model`` and report; strict raises on any gap
    (:class:`IncompleteCheckpointError`, naming ``checkpoint`` when given).

    The report goes to mmengine's current logger unless ``log=False`` (a caller that
    prints it itself, e.g. ``tools/convert_weights.py``).
    """
    own = model.state_dict()
    loadable, unexpected, mismatched = {}, [], []
    for key, value in state_dict.items():
        if key not in own:
            unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            loadable[key] = value
    mismatched_keys = {k for k, _, _ in mismatched}
    fresh_prefixes = tuple(f'{m}.' for m in getattr(model, 'modules_not_in_checkpoints', ()))
    fresh = sorted({k.rsplit('.', 1)[0] for k in own
                    if k.startswith(fresh_prefixes) and k not in loadable})
    skip = lambda k: _OPTIONAL.search(k) or (  # noqa: E731
        k.startswith(fresh_prefixes) and k not in loadable)
    missing = [k for k in own if k not in loadable and not skip(k)
               and k not in mismatched_keys]
    total = sum(t.numel() for k, t in own.items() if not skip(k))
    covered = sum(own[k].numel() for k in loadable if not _OPTIONAL.search(k))
    report = LoadReport(source, sorted(loadable), missing, unexpected, mismatched,
                        100.0 * covered / max(total, 1), fresh)
    if strict and not report.complete:
        raise IncompleteCheckpointError(report, checkpoint)
    with torch.no_grad():
        for key, value in loadable.items():
            own[key].copy_(value.to(own[key].dtype))
    if not log:
        pass
    elif report.coverage < 100.0 or not report.complete:
        print_log(report.summary(), logger='current', level=logging.WARNING)
    else:
        print_log(report.summary().splitlines()[0], logger='current', level=logging.INFO)
    return report


def loaded_state_dict(model: nn.Module, report: LoadReport) -> dict[str, torch.Tensor]:
    """The tensors of ``model`` that ``report``'s load filled from the checkpoint, and
    nothing else: what a converter may write.

    Keys the checkpoint lacked (``report.missing``, or shape mismatches) are left out,
    never written with the model's fresh random initialisation, so a later load of the
    written file reports them missing instead of claiming full coverage. BatchNorm's
    ``num_batches_tracked`` step counters, which are not weights (coverage ignores them),
    are kept where their norm layer's weight was loaded, so that a complete conversion
    also loads with ``load_state_dict(strict=True)``; a layer the file lacked keeps none.
    """
    loaded = set(report.loaded)

    def keep(key: str) -> bool:
        if key in loaded:
            return True
        if not _OPTIONAL.search(key):
            return False
        layer = key[:-len('num_batches_tracked')]  # 'layer1.0.bn1.' or '' (a bare BN)
        return f'{layer}weight' in loaded or f'{layer}running_mean' in loaded
    return {k: v.detach().clone() for k, v in model.state_dict().items() if keep(k)}


def load_pretrained(model: nn.Module, checkpoint: str | Path | Mapping, *,
                    source: str | None = None, strict: bool = True, prefix: str | None = None,
                    allow_pickle: bool = False) -> LoadReport:
    """Read (a local file or a cached ``torchvision://``/``open-mmlab://`` name), convert
    (any dialect), load (strict by default), report."""
    ckpt = read_checkpoint(checkpoint, allow_pickle=allow_pickle) \
        if not isinstance(checkpoint, Mapping) else checkpoint
    if prefix:
        sd = unwrap_state_dict(ckpt)
        ckpt = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    target = {'norm_cfg': getattr(model, 'norm_cfg', None) or {}}
    converted = convert(ckpt, source=source, target_cfg=target)
    name = None if isinstance(checkpoint, Mapping) else str(checkpoint)
    fit_to_model(model, converted, strict=strict, checkpoint=name)
    return load_state_dict(model, converted.state_dict, source=converted.label,
                           strict=strict, checkpoint=name)


def fit_to_model(model: nn.Module, converted: Converted, *, strict: bool = True,
                 checkpoint: str | None = None) -> Converted:
    """Adapt ``converted`` (in place) to a model's choices that no checkpoint fixes, and
    refuse a layout the weights were not trained for.

    A ResNet v2 model without a final norm (``out_norm=False``) drops the checkpoint's
    ``post_norm.*``, as a classifier is dropped. A v2 checkpoint's ``stride_in`` must be
    the model's (the keys are the same in both layouts: a mismatch would load silently):
    ``ValueError`` when ``strict``. A different ``stem_pool_padding`` is logged.
    """
    if converted.implied.get('variant') != 'v2':
        return converted
    own = model.state_dict()
    extra = [k for k in converted.state_dict if k.startswith('post_norm.') and k not in own]
    for k in extra:
        converted.dropped.append(k)
        del converted.state_dict[k]
    where = f'{checkpoint}: ' if checkpoint else ''
    stride_in = getattr(model, 'stride_in', None)
    if stride_in is not None and stride_in != converted.implied['stride_in'] and strict:
        raise ValueError(f"{where}{converted.source} weights imply stride_in="
                         f"{converted.implied['stride_in']!r} but the model has stride_in="
                         f'{stride_in!r}; build it with the weights\' layout or pass '
                         'strict=False')
    pool = getattr(model, 'stem_pool_padding', None)
    if pool is not None and pool != converted.implied['stem_pool_padding']:
        print_log(f"{where}{converted.source} weights imply stem_pool_padding="
                  f"{converted.implied['stem_pool_padding']!r}; the model has {pool!r} "
                  '(the stem pool\'s border windows differ)', logger='current',
                  level=logging.WARNING)
    return converted
