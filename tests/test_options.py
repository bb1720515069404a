"""resnet_backbone.options: one immutable options object per thread / context."""
from __future__ import annotations

import threading

import pytest

from resnet_backbone import options
from resnet_backbone.models.fast import always_fold, mkldnn_fusion

pytestmark = pytest.mark.filterwarnings('error')


def test_defaults():
    assert options.current() == options.Options(mkldnn_fusion=True, fold_always=False,
                                                recomputing=False)


def test_restored_on_exit_and_on_error():
    with options.using(fold_always=True) as inside:
        assert inside.fold_always and options.current() is inside
    assert options.current() == options.Options()
    with pytest.raises(RuntimeError, match='boom'), options.using(mkldnn_fusion=False):
        raise RuntimeError('boom')
    assert options.current().mkldnn_fusion is True


def test_nested():
    with options.using(fold_always=True):
        with options.using(mkldnn_fusion=False):
            assert options.current() == options.Options(mkldnn_fusion=False, fold_always=True)
            with options.using(fold_always=False):
                assert not options.current().fold_always
                assert not options.current().mkldnn_fusion
            assert options.current().fold_always
        assert options.current() == options.Options(fold_always=True)
    assert options.current() == options.Options()


def test_wrappers_are_context_managers_over_the_options():
    with mkldnn_fusion(False):
        assert options.current().mkldnn_fusion is False
        with mkldnn_fusion(True):
            assert options.current().mkldnn_fusion is True
        assert options.current().mkldnn_fusion is False
    with always_fold():
        assert options.current().fold_always is True
    assert options.current() == options.Options()


def test_per_thread():
    """A thread sees the defaults while the main thread has changed them, and the
    thread's own change does not leak back."""
    seen = {}
    changed = threading.Event()
    checked = threading.Event()

    def worker():
        changed.wait(5)
        seen['before'] = options.current()
        with options.using(mkldnn_fusion=False):
            seen['inside'] = options.current()
            checked.set()

    t = threading.Thread(target=worker)
    t.start()
    with options.using(fold_always=True):
        changed.set()
        checked.wait(5)
        assert options.current() == options.Options(fold_always=True)  # not the thread's
    t.join(5)
    assert seen['before'] == options.Options()
    assert seen['inside'] == options.Options(mkldnn_fusion=False)


def test_bad_names_and_values():
    with pytest.raises(TypeError, match=r"^unknown option 'fold'; allowed: fold_always, "
                                        r'mkldnn_fusion, recomputing$'):
        with options.using(fold=True):
            pass
    with pytest.raises(TypeError, match=r"^fold_always must be True or False; got 'yes'$"):
        with options.using(fold_always='yes'):
            pass
    assert options.current() == options.Options()
