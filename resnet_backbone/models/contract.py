"""What every backbone of this package offers beyond ``forward``: its blocks in order,
their stochastic-depth rates, the fast-path switch, and the channels and strides of the
returned maps.

A backbone sets ``res_layers`` (stage attribute names), ``drop_path_rate``,
``out_indices``, ``_stage_channels`` and ``_stage_strides``; ``ResNetV1Custom`` and
``ResNetV2Custom`` share this one copy.
"""
from __future__ import annotations

from .blocks import ResBlock


class BackboneContract:
    """Mixin for the backbones' shared contract (see the module docstring)."""

    def _blocks(self) -> list[ResBlock]:
        """Every residual block, stage by stage, in order."""
        return [m for name in self.res_layers for m in getattr(self, name).modules()
                if isinstance(m, ResBlock)]

    def drop_path_rates(self) -> list[float]:
        """Each block's stochastic-depth rate, in order: timm's linear rule,
        ``drop_path_rate * i / (n - 1)`` for block ``i`` of ``n``.

        Example:
            >>> from resnet_backbone import ResNetV1Custom
            >>> ResNetV1Custom(18, base_channels=4, drop_path_rate=0.1).drop_path_rates()[-1]
            0.1
        """
        n = len(self._blocks())
        return [self.drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]

    @property
    def fast(self) -> bool:
        """Fold eval-mode BN into the convs it follows (True) or run the plain ops."""
        return self._fast

    @fast.setter
    def fast(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f'fast must be True or False; got {value!r}')
        self._fast = value
        for m in self.modules():
            if isinstance(m, ResBlock):
                m.fast = value

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of each returned map, in ``out_indices`` order (FPN ``in_channels``)."""
        return tuple(self._stage_channels[i] for i in self.out_indices)

    @property
    def out_strides(self) -> tuple[int, ...]:
        """Stride (w.r.t. the input) of each returned map, in ``out_indices`` order:
        4/8/16/32 for C2..C5 (in both v2 layouts too)."""
        return tuple(self._stage_strides[i] for i in self.out_indices)
