"""Registry glue: make ``type='ResNetV1Custom'`` resolve in MMDetection configs.

Importing :mod:`resnet_backbone` runs this. It registers the backbones into mmdet's
``MODELS`` (found under ``default_scope='mmdet'``) when mmdet is installed, and into
mmengine's root ``MODELS`` otherwise. ``mmdet.registry`` is a light module: it does
not import ``mmdet.models`` nor ``mmcv.ops``.

It also adds a child registry with scope ``resnet_backbone``, so the fully-qualified
``type='resnet_backbone.ResNetV1Custom'`` resolves from any scope.
"""
from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping

from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

from .models.resnet import ResNetV1cCustom, ResNetV1Custom, ResNetV1dCustom, ResNeXtCustom
from .models.resnet_v2 import ResNetV2Custom
from .spec import choice_error

try:
    from mmdet.registry import MODELS as PARENT
except ImportError:  # mmdet is optional for the bare backbone
    PARENT = MMENGINE_MODELS

MODELS = Registry('model', parent=PARENT, scope='resnet_backbone',
                  locations=['resnet_backbone'])

BACKBONES = (ResNetV1Custom, ResNetV1cCustom, ResNetV1dCustom, ResNeXtCustom, ResNetV2Custom)
for _cls in BACKBONES:
    for _registry in (PARENT, MODELS):
        if _cls.__name__ not in _registry.module_dict:
            _registry.register_module(module=_cls)


def _allowed_keys(cls: type = ResNetV1Custom) -> list[str]:
    """The config keys ``cls`` takes: its own named parameters, then (where it passes
    ``**kwargs`` on, as ``ResNeXtCustom`` does) ``ResNetV1Custom``'s."""
    keys: list[str] = []
    for klass in (cls, ResNetV1Custom):
        params = inspect.signature(klass.__init__).parameters
        keys += [n for n, p in params.items() if n != 'self' and n not in keys
                 and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return keys


def backbone_class(type_name: object) -> type | None:
    """Our backbone class a config's ``type`` names, or None when it names none of ours.

    Args:
        type_name: ``'ResNetV1Custom'``, ``'resnet_backbone.ResNetV1dCustom'``,
            ``'mmdet.ResNetV1cCustom'`` (the scopes they are registered in), or a class.

    Example:
        >>> backbone_class('resnet_backbone.ResNetV1dCustom').__name__
        'ResNetV1dCustom'
        >>> backbone_class('ResNet') is None
        True
    """
    if inspect.isclass(type_name):
        return type_name if type_name in BACKBONES else None
    if not isinstance(type_name, str):
        return None
    scope, _, name = type_name.rpartition('.')
    if scope not in ('', 'resnet_backbone', 'mmdet'):
        return None
    return next((cls for cls in BACKBONES if cls.__name__ == name), None)


_RESNEXT_KEYS = ('groups', 'base_width')


def check_backbone_kwargs(type_name: str | type, kwargs: Mapping,
                          prefix: str = 'model.backbone') -> None:
    """One-line ``ValueError`` for an unknown or missing key of one of our backbones.

    Configs (and ``--cfg-options model.backbone.dept=50``) fail late and at length
    otherwise. Types that are not ours (mmdet's ``ResNet``, ...) are not checked, nor
    are the registry's own keys (``type``, ``_scope_``, ``_delete_``: any ``_``-name).
    The one implementation of this check: the tools' config check should call it.

    Args:
        type_name: the config's ``type`` (see :func:`backbone_class`).
        kwargs: the backbone config, or its other keys.
        prefix: where the keys live in the config, for the message.

    Raises:
        ValueError: ``'<prefix>.<key>: unknown key for <class>; did you mean ...?'`` per
            misspelt key, or ``'<prefix>.depth is missing ...'``.

    Example:
        >>> try:
        ...     check_backbone_kwargs('ResNetV1Custom', dict(dept=50))
        ... except ValueError as exc:
        ...     print(str(exc).split(' (allowed keys')[0])
        model.backbone.dept: unknown key for ResNetV1Custom; did you mean 'depth'?
    """
    cls = backbone_class(type_name)
    if cls is None:
        return
    allowed = _allowed_keys(cls)
    unknown = [k for k in kwargs
               if k != 'type' and not str(k).startswith('_') and k not in allowed]
    if unknown:
        parts = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f'; did you mean {close[0]!r}?' if close else ''
            if key in _RESNEXT_KEYS and key in _allowed_keys(ResNeXtCustom):
                hint = f"; {key} is ResNeXt's: use type='ResNeXtCustom'"
            parts.append(f'{prefix}.{key}: unknown key for {cls.__name__}{hint}')
        raise ValueError(f"{'; '.join(parts)} (allowed keys: {', '.join(allowed)})")
    if 'depth' not in kwargs:
        raise choice_error(f'{prefix}.depth is missing: {cls.__name__} needs it',
                           cls.arch_settings)
