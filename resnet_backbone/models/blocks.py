"""Residual blocks: ``BasicBlock``, ``Bottleneck``, ``BottleneckX``, ``PreActBottleneck``.

Module layout and attribute names are mmdet's, so state dicts are interchangeable. Each
block *describes* its branch once (:meth:`ResBlock.describe`); :class:`ResBlock` runs that
description plain or checkpointed, folded or not, and the inference snapshot reads it.

Example (a scale after conv3 is a step's plugin, so the last conv no longer feeds only
the add):
    >>> class Scaled(Bottleneck):
    ...     def __init__(self, *args, **kwargs):
    ...         super().__init__(*args, **kwargs)
    ...         self.scale = nn.Identity()
    ...     def describe(self):
    ...         desc = super().describe()
    ...         return desc.with_last_step(plugins=(*desc.steps[-1].plugins, 'scale'))
    >>> Scaled(16, 4).recompute_may_skip_tail()
    False
"""
from __future__ import annotations

import copy
import dataclasses
import math

import torch
from mmcv.cnn import build_conv_layer, build_norm_layer, build_plugin_layer
from mmengine.model import BaseModule
from torch import nn

from ..spec import STYLES, check_choice, positive_int
from .checkpointing import checkpointed, recomputing
from .fast import conv_norm, sequential_conv_norm

PLUGIN_POSITIONS = ('after_conv1', 'after_conv2', 'after_conv3')


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of a residual branch: ``plugins(act(norm(conv(x))))``.

    Names are attribute names on the block, so the description adds no module and
    changes no state-dict key. A conv's groups, stride, dilation and bias come from the
    conv module itself (ResNeXt needs no new field).

    Either part may be absent, not both: a step without a conv is a norm (+ act) alone,
    e.g. a pre-activation unit's ``preact = relu(bn(x))``; a step without a norm is a
    conv alone, e.g. its last conv (which carries a bias in TF-slim's layout).

    Attributes:
        conv: The conv module's name, e.g. ``'conv1'``; ``None`` for none.
        norm: The norm module's name, e.g. ``block.norm1_name`` (``'bn1'``, ``'gn1'``);
            ``None`` for none.
        act: Apply the block's ``relu`` after the norm.
        plugins: Names of modules applied in order after that (mmcv plugins such as
            ``after_conv3`` ones, or any module: a learnable scale, a drop-path).
    """

    conv: str | None
    norm: str | None
    act: bool = True
    plugins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.conv is None and self.norm is None:
            raise ValueError('a Step needs a conv, a norm or both; got neither')

    @property
    def conv_then_norm(self) -> bool:
        """Does a norm directly follow a conv (what the fast path can fold)?"""
        return self.conv is not None and self.norm is not None


@dataclasses.dataclass(frozen=True)
class BlockDescription:
    """A block's computation: ``out_act(drop_path(steps(x)) + shortcut(x))``, or, with
    ``shortcut_input='preact'``, ``out_act(drop_path(steps[1:](p)) + shortcut(p))`` where
    ``p = steps[0](x)`` (a pre-activation unit's projection reads ``preact``).

    Attributes:
        steps: The residual branch, in order (at least one step).
        shortcut: Name of the shortcut module: ``None`` at run time means identity, else an
            ``nn.Sequential`` of (pool?, conv, norm, ...) such as ``downsample``.
        shortcut_input: What the shortcut reads: ``'x'`` (the block input) or
            ``'preact'`` (the output of the first step, which must have no conv: a
            norm + act alone, TF-slim's ``preact``).
        out_act: Apply the block's ``relu`` after the add (``False`` e.g. for
            pre-activation units).
        drop_path: Name of the block's :class:`DropPath` (stochastic depth), applied to
            the whole branch before the add; ``None`` for none. It multiplies the branch
            by a per-sample constant (a mask that needs no gradient), so backward does not
            need the tail's output: the tail still feeds only the add, as far as the
            checkpoint recompute is concerned (the recompute draws the same mask: the
            checkpoint restores the RNG state).
    """

    steps: tuple[Step, ...]
    shortcut: str = 'downsample'
    out_act: bool = True
    drop_path: str | None = None
    shortcut_input: str = 'x'

    def __post_init__(self) -> None:
        if not self.steps or not all(isinstance(s, Step) for s in self.steps):
            raise ValueError(f'a block description needs one or more Step; got {self.steps!r}')
        check_choice('shortcut_input', self.shortcut_input, ('x', 'preact'))
        if self.shortcut_input == 'preact' and (len(self.steps) < 2
                                                or self.steps[0].conv is not None):
            raise ValueError("shortcut_input='preact' needs a first step without a conv "
                             '(the preact norm + act) and at least one step after it')

    @property
    def tail_feeds_only_the_add(self) -> bool:
        """Is the last conv + norm's output used by the residual add and nothing else?

        A ``drop_path`` between them does not change the answer: ``branch * mask`` saves
        the mask, not the branch, for backward.
        """
        last = self.steps[-1]
        return not last.act and not last.plugins

    def with_last_step(self, **changes) -> BlockDescription:
        """This description with the last step's fields changed (e.g. ``plugins=``)."""
        last = dataclasses.replace(self.steps[-1], **changes)
        return dataclasses.replace(self, steps=(*self.steps[:-1], last))


class DropPath(nn.Module):
    """Stochastic depth: zero the input of a random subset of samples, in training only.

    Each sample is kept with probability ``1 - drop_prob`` and, when kept, scaled by
    ``1 / (1 - drop_prob)``, so the expectation is unchanged. The mask is drawn with the
    same ops as timm's ``drop_path`` (``new_empty(...).bernoulli_(keep).div_(keep)``), so
    on the same seed it is timm's mask.

    Args:
        drop_prob: Probability of dropping a sample's branch, in ``[0, 1)``.

    Example:
        >>> drop = DropPath(0.5).eval()
        >>> x = torch.ones(4, 2, 3, 3)
        >>> torch.equal(drop(x), x)  # identity in eval mode
        True
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if isinstance(drop_prob, bool) or not isinstance(drop_prob, (int, float)) \
                or not 0.0 <= drop_prob < 1.0:
            raise ValueError(f'drop_prob must be a float in [0, 1); got {drop_prob!r}')
        self.drop_prob = float(drop_prob)

    @property
    def active(self) -> bool:
        """Does the forward pass change its input (training and a positive rate)?"""
        return self.training and self.drop_prob > 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        mask.div_(keep)  # keep > 0 always (drop_prob < 1): scale kept samples by 1/keep
        return x * mask

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob:.3f}'


#: ResBlock methods that run a description; a subclass overriding any of them may compute
#: something the description does not say, so it gets neither the recompute skip nor the
#: snapshot's folded block (its convs still fold where ``fast``: that is exact op by op).
_GENERIC_METHODS = ('forward', '_residual', '_run_steps', '_shortcut')


class ResBlock(BaseModule):
    """Base class of the residual blocks: runs :meth:`describe`'s description, checkpointed
    or not, folded or not; and ``freeze()``.

    A subclass builds its modules and says how they connect in :meth:`describe`; it does
    not write ``forward``. The description is built once (:attr:`description`) and again
    after a module is added, replaced or removed (``set_drop_path`` among them).
    """

    expansion = 1
    with_cp: bool
    downsample: nn.Module | None
    norm1_name: str
    norm2_name: str
    relu: nn.Module
    stride: int
    #: fold eval BN into the convs (see :mod:`resnet_backbone.models.fast`); the backbone
    #: sets it. False = mmdet's exact op order.
    fast: bool = False

    @property
    def norm1(self) -> nn.Module:
        return getattr(self, self.norm1_name)

    @property
    def norm2(self) -> nn.Module:
        return getattr(self, self.norm2_name)

    def _set_layout(self, stride: int, dilation: int, style: str, with_cp: bool) -> None:
        """mmdet's block attributes every block has (``style`` checked)."""
        check_choice('style', style, STYLES)
        self.stride, self.dilation, self.style, self.with_cp = stride, dilation, style, with_cp

    def freeze(self) -> ResBlock:
        """Stop gradients into this block and keep its norm layers in eval mode.

        The owning backbone re-applies this after every ``train()`` call.
        """
        self.eval()
        for p in self.parameters():
            p.requires_grad = False
        return self

    def describe(self) -> BlockDescription:  # pragma: no cover - abstract
        """The block's computation, once (see :class:`BlockDescription`).

        A subclass passes ``drop_path=self.drop_path_name`` so stochastic depth, when the
        backbone sets it (:meth:`set_drop_path`), is part of the description.
        """
        raise NotImplementedError

    @property
    def description(self) -> BlockDescription:
        """:meth:`describe`, built once and kept until a module attribute changes."""
        desc = self.__dict__.get('_description')
        if desc is None:
            desc = self.__dict__['_description'] = self.describe()
        return desc

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        if isinstance(value, nn.Module) or name in self._modules:
            self.__dict__.pop('_description', None)  # a module changed: describe again

    def __delattr__(self, name: str) -> None:
        super().__delattr__(name)
        self.__dict__.pop('_description', None)

    def add_module(self, name: str, module: nn.Module | None) -> None:
        super().add_module(name, module)
        self.__dict__.pop('_description', None)

    @property
    def drop_path_name(self) -> str | None:
        """``'drop_path'`` when :meth:`set_drop_path` gave the block a :class:`DropPath`,
        else ``None`` (the description's ``drop_path``)."""
        return 'drop_path' if isinstance(self._modules.get('drop_path'), DropPath) else None

    def set_drop_path(self, drop_prob: float) -> ResBlock:
        """Give the block stochastic depth at ``drop_prob``; 0 removes it.

        A rate of 0 adds no module at all, so the module tree, the state dict and every
        output stay exactly as without stochastic depth. The module has no parameters nor
        buffers: state-dict keys never change.

        Args:
            drop_prob: Probability of dropping the residual branch of a sample, in [0, 1).

        Returns:
            The block.
        """
        module = DropPath(drop_prob)  # validates the rate, also when it is 0
        if module.drop_prob > 0.0:
            self.drop_path = module
            # a frozen block stays in eval mode: its DropPath too (off in frozen stages)
            module.train(self.training)
        elif 'drop_path' in self._modules:
            del self.drop_path
        return self

    def _drop_path_active(self, desc: BlockDescription) -> bool:
        return desc.drop_path is not None and getattr(self, desc.drop_path).active

    def _runs_as_described(self) -> bool:
        """True unless a subclass replaced part of the generic code that runs the
        description (then only the description-independent reference run is safe)."""
        cls = type(self)
        return all(getattr(cls, name) is getattr(ResBlock, name) for name in _GENERIC_METHODS)

    def recompute_may_skip_tail(self) -> bool:
        """May a checkpoint recompute skip the last conv (and the projection shortcut)?

        Only where the description proves their outputs feed the residual add and nothing
        else, and the block runs exactly its description.
        """
        return self._runs_as_described() and self.description.tail_feeds_only_the_add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the block: plain, or checkpointed (``with_cp``) where autograd records it.

        Args:
            x: (N, C, H, W) input.

        Returns:
            The block's output map.
        """
        desc = self.description
        if self.with_cp and torch.is_grad_enabled() and (
                x.requires_grad or any(p.requires_grad for p in self.parameters())):
            # only ``x`` is kept (measured to keep the fewest bytes: docs/fast_path.md);
            # the RNG state is replayed only where the block draws random numbers
            out = checkpointed(self._residual, x, self, self._draws_random(desc))
        else:
            out = self._residual(x)
        return self.relu(out) if desc.out_act else out

    def _draws_random(self, desc: BlockDescription) -> bool:
        """Might a forward of this block draw random numbers (so that a checkpoint
        recompute must replay the RNG)? An active drop path, a training-mode dropout, or a
        plugin (unknown code): yes."""
        return self._drop_path_active(desc) or any(s.plugins for s in desc.steps) or any(
            isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0
            for m in self.modules())

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        """``steps(x) + shortcut(x)``, folded where ``fast``."""
        desc = self.description
        # In a checkpoint recompute a last conv that feeds only the add (which saves
        # nothing) need not run: its conv and the shortcut's save their inputs and skip it.
        unused = recomputing() and self.recompute_may_skip_tail()
        if desc.shortcut_input == 'preact':
            # the branch and the shortcut both read preact = steps[0](x); x is not needed
            x = self._run_steps(x, desc, stop=1)
            out = self._run_steps(x, desc, unused, start=1)
        else:
            out = self._run_steps(x, desc, unused)
        if desc.drop_path is not None:
            # per-sample constant: saves the mask, not ``out``, so the skip stays sound
            out = getattr(self, desc.drop_path)(out)
        out += self._shortcut(x, desc, unused)
        return out

    def _run_steps(self, x: torch.Tensor, desc: BlockDescription,
                   tail_unused: bool = False, start: int = 0,
                   stop: int | None = None) -> torch.Tensor:
        """The residual branch: the steps ``start:stop`` (default all) in order."""
        out = x
        last = len(desc.steps) - 1
        stop = len(desc.steps) if stop is None else stop
        for i in range(start, stop):
            step = desc.steps[i]
            if step.conv_then_norm:
                out = conv_norm(getattr(self, step.conv), getattr(self, step.norm), out,
                                self.fast, tail_unused and i == last)
            elif step.conv is not None:  # a conv alone (e.g. with a bias): never folded
                out = getattr(self, step.conv)(out)
            else:  # a norm alone (a pre-activation): nothing to fold it into
                out = getattr(self, step.norm)(out)
            if step.act:
                out = self.relu(out)
            if step.plugins:
                out = self.forward_plugin(out, list(step.plugins))
        return out

    def forward_plugin(self, x: torch.Tensor, plugin_names: list[str]) -> torch.Tensor:
        """Apply the modules named ``plugin_names`` in order (mmdet's name and signature,
        so a subclass that overrides it is honoured)."""
        out = x
        for name in plugin_names:
            out = getattr(self, name)(out)
        return out

    def _shortcut(self, x: torch.Tensor, desc: BlockDescription,
                  output_unused: bool = False) -> torch.Tensor:
        shortcut = getattr(self, desc.shortcut)
        if shortcut is None:
            return x
        return sequential_conv_norm(shortcut, x, self.fast, output_unused)


class BasicBlock(ResBlock):
    """Two 3x3 convs with a residual connection (ResNet-18/34).

    Example:
        >>> block = BasicBlock(8, 8)
        >>> block(torch.rand(1, 8, 16, 16)).shape
        torch.Size([1, 8, 16, 16])
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, style: str = 'pytorch',
                 with_cp: bool = False, conv_cfg: dict | None = None,
                 norm_cfg: dict | None = None, dcn: dict | None = None,
                 plugins: list | None = None, init_cfg: dict | list | None = None) -> None:
        super().__init__(init_cfg)
        self._set_layout(stride, dilation, style, with_cp)
        if dcn is not None:
            raise ValueError('dcn is only supported by Bottleneck blocks (depth >= 50); '
                             'got dcn with a BasicBlock depth (18 or 34)')
        if plugins:
            raise ValueError('plugins are only supported by Bottleneck blocks (depth >= 50); '
                             'got plugins with a BasicBlock depth (18 or 34)')
        norm_cfg = norm_cfg if norm_cfg is not None else dict(type='BN')
        self.norm1_name, norm1 = build_norm_layer(norm_cfg, planes, postfix=1)
        self.norm2_name, norm2 = build_norm_layer(norm_cfg, planes, postfix=2)
        self.conv1 = build_conv_layer(conv_cfg, inplanes, planes, 3, stride=stride,
                                      padding=dilation, dilation=dilation, bias=False)
        self.add_module(self.norm1_name, norm1)
        self.conv2 = build_conv_layer(conv_cfg, planes, planes, 3, padding=1, bias=False)
        self.add_module(self.norm2_name, norm2)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.with_dcn = False
        self.with_plugins = False

    def describe(self) -> BlockDescription:
        """conv1 + norm1 + ReLU, conv2 + norm2; ``relu(branch + shortcut)``."""
        return BlockDescription((Step('conv1', self.norm1_name),
                                 Step('conv2', self.norm2_name, act=False)),
                                drop_path=self.drop_path_name)


class Bottleneck(ResBlock):
    """1x1 -> 3x3 -> 1x1 bottleneck with a residual connection (ResNet-50+).

    ``style='pytorch'`` puts the stride on the 3x3 conv, ``'caffe'`` on the first 1x1.
    ``dcn`` replaces the 3x3 conv with a deformable one (needs mmcv's compiled ops);
    ``plugins`` inserts mmcv plugin layers after conv1/conv2/conv3.

    ``width`` and ``groups`` are the ResNeXt extension (:class:`BottleneckX` sets them):
    conv1 and conv2 are ``width`` wide (default ``planes``) and conv2 has ``groups``
    groups. With the defaults this is mmdet's ``Bottleneck``, module for module.

    Example:
        >>> block = Bottleneck(16, 4)
        >>> block(torch.rand(1, 16, 16, 16)).shape
        torch.Size([1, 16, 16, 16])
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None, style: str = 'pytorch',
                 with_cp: bool = False, conv_cfg: dict | None = None,
                 norm_cfg: dict | None = None, dcn: dict | None = None,
                 plugins: list | None = None, init_cfg: dict | list | None = None, *,
                 groups: int = 1, width: int | None = None) -> None:
        super().__init__(init_cfg)
        self._set_layout(stride, dilation, style, with_cp)
        groups = positive_int('groups', groups)
        width = positive_int('width', planes if width is None else width)
        if width % groups:
            raise ValueError(f'the bottleneck width {width} is not divisible by groups={groups}; '
                             'choose groups and base_width so that it is')
        if dcn is not None and not isinstance(dcn, dict):
            raise TypeError(f'dcn must be a dict such as dict(type="DCN") or None; got {dcn!r}')
        if plugins is not None and not isinstance(plugins, list):
            raise TypeError('plugins must be a list of dicts or None; '
                            f'got {type(plugins).__name__}')
        for p in plugins or []:
            if p.get('position') not in PLUGIN_POSITIONS:
                raise ValueError(f"plugin position={p.get('position')!r} is not supported; "
                                 f"allowed values: {', '.join(PLUGIN_POSITIONS)}")
        norm_cfg = norm_cfg if norm_cfg is not None else dict(type='BN')
        dcn = copy.deepcopy(dcn)
        self.inplanes = inplanes
        self.planes = planes
        self.conv_cfg = conv_cfg
        self.norm_cfg = norm_cfg
        self.dcn = dcn
        self.with_dcn = dcn is not None
        self.plugins = plugins
        self.with_plugins = plugins is not None
        self.groups = groups
        self.width = width
        if self.with_plugins:
            self.after_conv1_plugins = [p['cfg'] for p in plugins if p['position'] == 'after_conv1']
            self.after_conv2_plugins = [p['cfg'] for p in plugins if p['position'] == 'after_conv2']
            self.after_conv3_plugins = [p['cfg'] for p in plugins if p['position'] == 'after_conv3']
        if style == 'pytorch':
            self.conv1_stride, self.conv2_stride = 1, stride
        else:
            self.conv1_stride, self.conv2_stride = stride, 1

        self.norm1_name, norm1 = build_norm_layer(norm_cfg, width, postfix=1)
        self.norm2_name, norm2 = build_norm_layer(norm_cfg, width, postfix=2)
        self.norm3_name, norm3 = build_norm_layer(norm_cfg, planes * self.expansion, postfix=3)
        self.conv1 = build_conv_layer(conv_cfg, inplanes, width, kernel_size=1,
                                      stride=self.conv1_stride, bias=False)
        self.add_module(self.norm1_name, norm1)
        # ``fallback_on_stride``: a plain conv where the 3x3 conv is strided. (mmdet pops the
        # key from the dict shared by all blocks, so there only the first block falls back.)
        fallback = bool(dcn.pop('fallback_on_stride', False)) if dcn else False
        if not self.with_dcn or (fallback and self.conv2_stride > 1):
            self.conv2 = build_conv_layer(conv_cfg, width, width, kernel_size=3,
                                          stride=self.conv2_stride, padding=dilation,
                                          dilation=dilation, groups=groups, bias=False)
        else:
            if conv_cfg is not None:
                raise ValueError('conv_cfg must be None when dcn is set; '
                                 f'got conv_cfg={conv_cfg!r}')
            import mmcv.ops  # noqa: F401  (registers DCN/DCNv2; only imported when asked for)
            self.conv2 = build_conv_layer(dcn, width, width, kernel_size=3,
                                          stride=self.conv2_stride, padding=dilation,
                                          dilation=dilation, groups=groups, bias=False)
        self.add_module(self.norm2_name, norm2)
        self.conv3 = build_conv_layer(conv_cfg, width, planes * self.expansion, kernel_size=1,
                                      bias=False)
        self.add_module(self.norm3_name, norm3)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

        if self.with_plugins:
            self.after_conv1_plugin_names = self._make_plugins(width, self.after_conv1_plugins)
            self.after_conv2_plugin_names = self._make_plugins(width, self.after_conv2_plugins)
            self.after_conv3_plugin_names = self._make_plugins(planes * self.expansion,
                                                               self.after_conv3_plugins)

    def _make_plugins(self, in_channels: int, plugins: list[dict]) -> list[str]:
        names = []
        for plugin in plugins:
            plugin = plugin.copy()
            name, layer = build_plugin_layer(plugin, in_channels=in_channels,
                                             postfix=plugin.pop('postfix', ''))
            if hasattr(self, name):
                raise ValueError(f'plugins: duplicate plugin name {name!r} in one block; '
                                 'give each a distinct postfix')
            self.add_module(name, layer)
            names.append(name)
        return names

    # mmdet-compatible name
    make_block_plugins = _make_plugins

    @property
    def norm3(self) -> nn.Module:
        return getattr(self, self.norm3_name)

    def describe(self) -> BlockDescription:
        """conv1 + norm1 + ReLU (+ after_conv1 plugins), conv2 + norm2 + ReLU (+ after_conv2
        plugins), conv3 + norm3 (+ after_conv3 plugins); ``relu(branch + shortcut)``."""
        plugins = {pos: tuple(getattr(self, f'{pos}_plugin_names', ())) if self.with_plugins
                   else () for pos in PLUGIN_POSITIONS}
        return BlockDescription((
            Step('conv1', self.norm1_name, plugins=plugins['after_conv1']),
            Step('conv2', self.norm2_name, plugins=plugins['after_conv2']),
            Step('conv3', self.norm3_name, act=False, plugins=plugins['after_conv3'])),
            drop_path=self.drop_path_name)


def resnext_width(planes: int, groups: int, base_width: int, base_channels: int) -> int:
    """The width of a ResNeXt bottleneck's conv1/conv2, mmdet's formula exactly.

    ``planes`` when ``groups == 1`` (a plain ResNet bottleneck), else
    ``floor(planes * base_width / base_channels) * groups``.

    Example:
        >>> resnext_width(64, 32, 4, 64), resnext_width(512, 32, 4, 64)
        (128, 1024)
    """
    if groups == 1:
        return planes
    return math.floor(planes * (base_width / base_channels)) * groups


class BottleneckX(Bottleneck):
    """ResNeXt's bottleneck (mmdet's ``resnext.Bottleneck``): a grouped 3x3 conv, with
    conv1/conv2 :func:`resnext_width` wide.

    mmdet's signature and state-dict keys. Unlike mmdet's, which builds a plain
    bottleneck and then replaces its convs, it builds each module once.

    Args:
        inplanes: Input channels.
        planes: The stage's planes; the output has ``planes * 4`` channels.
        groups: Groups of the 3x3 conv (the cardinality, 32 in ``x101-32x4d``).
        base_width: Width per group in the first stage (4 in ``x101-32x4d``).
        base_channels: The backbone's ``base_channels`` (the formula's denominator).
        **kwargs: :class:`Bottleneck`'s other arguments.

    Example:
        >>> block = BottleneckX(64, 16, groups=4, base_width=4, base_channels=16)
        >>> block.conv2.groups, block.conv2.out_channels
        (4, 16)
        >>> block(torch.rand(1, 64, 8, 8)).shape
        torch.Size([1, 64, 8, 8])
    """

    def __init__(self, inplanes: int, planes: int, groups: int = 1, base_width: int = 4,
                 base_channels: int = 64, **kwargs) -> None:
        for name, value in (('groups', groups), ('base_width', base_width),
                            ('base_channels', base_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive int; got {value!r}')
        width = resnext_width(planes, groups, base_width, base_channels)
        if width < groups:  # floor() gave 0 channels per group
            raise ValueError(f'groups={groups}, base_width={base_width} and base_channels='
                             f'{base_channels} give {planes} planes a width of {width}; '
                             'raise base_width or lower base_channels')
        super().__init__(inplanes, planes, groups=groups, width=width, **kwargs)
        self.base_width = base_width
        self.base_channels = base_channels


class PreActBottleneck(ResBlock):
    """The pre-activation bottleneck unit of ResNet v2 (He et al. 2016; TF-slim's
    ``bottleneck_v2``, Keras's ``residual_block_v2``, timm's ``PreActBottleneck``).

    ``preact = relu(bn0(x))``; the branch is ``conv1 (1x1) -> bn1 -> relu -> conv2 (3x3,
    stride) -> bn2 -> relu -> conv3 (1x1)`` with no norm after conv3; the output is
    ``branch + shortcut`` with no activation. The shortcut is a 1x1 conv on ``preact``
    (``downsample.0``) when the width changes, else ``x`` itself, subsampled by a 1x1
    max-pool with the unit's stride (``downsample.0`` is then that pool, no parameters).

    Args:
        inplanes: Input channels.
        planes: Bottleneck width; the output has ``planes * 4`` channels.
        stride: Stride of the unit (on the 3x3 conv and the shortcut).
        with_cp: Gradient checkpointing (the generic :class:`ResBlock` path).
        conv_cfg: mmcv conv config (``None`` = ``nn.Conv2d``).
        norm_cfg: mmcv norm config.
        bias: conv3 and the projection carry a bias (TF-slim and Keras; timm: none).
        init_cfg: mmengine init config.

    Example:
        >>> unit = PreActBottleneck(16, 8, stride=2)
        >>> unit(torch.rand(1, 16, 16, 16)).shape, unit.describe().shortcut_input
        (torch.Size([1, 32, 8, 8]), 'preact')
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, *, with_cp: bool = False,
                 conv_cfg: dict | None = None, norm_cfg: dict | None = None,
                 bias: bool = False, init_cfg: dict | list | None = None) -> None:
        super().__init__(init_cfg)
        norm_cfg = norm_cfg if norm_cfg is not None else dict(type='BN')
        out = planes * self.expansion
        self.inplanes, self.planes, self.stride, self.dilation = inplanes, planes, stride, 1
        self.with_cp = with_cp
        self.norm0_name, norm0 = build_norm_layer(norm_cfg, inplanes, postfix=0)
        self.norm1_name, norm1 = build_norm_layer(norm_cfg, planes, postfix=1)
        self.norm2_name, norm2 = build_norm_layer(norm_cfg, planes, postfix=2)
        self.add_module(self.norm0_name, norm0)
        self.conv1 = build_conv_layer(conv_cfg, inplanes, planes, 1, bias=False)
        self.add_module(self.norm1_name, norm1)
        self.conv2 = build_conv_layer(conv_cfg, planes, planes, 3, stride=stride, padding=1,
                                      bias=False)
        self.add_module(self.norm2_name, norm2)
        self.conv3 = build_conv_layer(conv_cfg, planes, out, 1, bias=bias)
        self.relu = nn.ReLU(inplace=True)
        self.projection = inplanes != out
        if self.projection:
            self.downsample = nn.Sequential(
                build_conv_layer(conv_cfg, inplanes, out, 1, stride=stride, bias=bias))
        elif stride > 1:
            self.downsample = nn.Sequential(nn.MaxPool2d(1, stride=stride))
        else:
            self.downsample = None

    @property
    def norm0(self) -> nn.Module:
        return getattr(self, self.norm0_name)

    def describe(self) -> BlockDescription:
        """norm0 + ReLU (preact), conv1 + norm1 + ReLU, conv2 + norm2 + ReLU, conv3;
        ``branch + shortcut`` (the projection reads preact, the identity x), no ReLU."""
        return BlockDescription((
            Step(None, self.norm0_name),
            Step('conv1', self.norm1_name),
            Step('conv2', self.norm2_name),
            Step('conv3', None, act=False)),
            out_act=False, drop_path=self.drop_path_name,
            shortcut_input='preact' if self.projection else 'x')
