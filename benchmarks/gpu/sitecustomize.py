"""Benchmark-only import shims for the GPU machine (not part of the package).

That machine has torch, torchvision, numpy, Pillow and PyYAML, but no mmengine/mmcv/mmdet
and no package registry. mmengine and mmdet come along as pure-Python wheels and mmcv as
its Python files; the compiled or heavy modules that mmdet.models imports at module level
but that a ResNet forward/backward never calls (mmcv._ext ops, cv2, scipy, matplotlib,
pycocotools, shapely) are replaced by inert stubs, and only when the real one is absent.
Any *use* of a stub beyond attribute access at import time would be a bug in the run.
"""
import importlib.abc
import importlib.machinery
import sys
import types

STUBBED = ('cv2', 'scipy', 'matplotlib', 'mpl_toolkits', 'pycocotools', 'shapely',
           'mmcv._ext', 'seaborn', 'terminaltables')
USED: list[str] = []


class _StubMeta(type):
    def __getattr__(cls, name):
        if name.startswith('__'):
            raise AttributeError(name)
        return _stub_type(f'{cls.__name__}.{name}')

    def __getitem__(cls, item):
        return cls

    def __or__(cls, other):
        return cls

    __ror__ = __or__


def _stub_type(name):
    def _call(self, *a, **k):
        return self

    def _getattr(self, attr):
        if attr.startswith('__'):
            raise AttributeError(attr)
        return _stub_type(f'{name}().{attr}')

    return _StubMeta(name, (), {'__init__': lambda self, *a, **k: None, '__call__': _call,
                                '__getattr__': _getattr, '__int__': lambda self: 0,
                                '__index__': lambda self: 0})


class _StubModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)
        return _stub_type(f'{self.__name__}.{name}')


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if any(fullname == s or fullname.startswith(s + '.') for s in STUBBED):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        mod = _StubModule(spec.name)
        mod.__path__ = []
        mod.__version__ = '0.0.0'
        USED.append(spec.name)
        return mod

    def exec_module(self, module):
        pass


sys.meta_path.append(_StubFinder())  # last: a real module, where installed, wins
