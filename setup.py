"""Everything is in pyproject.toml except one file setuptools cannot place on its own:
``resnet_backbone_ops_hook.pth``, which must sit at the top of site-packages so that every
interpreter imports the hook that gives mmcv-lite its ops (docs/ops.md). It goes into the
wheel (``pip install .``) through build_py and into the editable wheel (``pip install -e``,
what tools/setup.sh does) beside setuptools' own ``__editable__`` .pth; either way it is in
the distribution's RECORD, so ``pip uninstall resnet-backbone`` removes it.
"""
import os

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = 'resnet_backbone_ops_hook.pth'
HERE = os.path.dirname(os.path.abspath(__file__))


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        self.copy_file(os.path.join(HERE, PTH), os.path.join(self.build_lib, PTH),
                       preserve_mode=False)

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, PTH)]


class _WithPth:
    """Wraps setuptools' editable strategy (private API, pinned setuptools in
    constraints.txt): writes its files, then ours."""

    def __init__(self, strategy):
        self.strategy = strategy

    def __call__(self, wheel, files, mapping):
        self.strategy(wheel, files, mapping)
        with open(os.path.join(HERE, PTH), 'rb') as f:
            wheel.writestr(PTH, f.read())

    def __enter__(self):
        self.strategy.__enter__()
        return self

    def __exit__(self, *exc):
        return self.strategy.__exit__(*exc)


class EditableWheelWithPth(editable_wheel):
    def _select_strategy(self, *args, **kwargs):
        return _WithPth(super()._select_strategy(*args, **kwargs))


setup(cmdclass={'build_py': BuildPyWithPth, 'editable_wheel': EditableWheelWithPth})
