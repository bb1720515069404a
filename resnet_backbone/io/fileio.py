"""Atomic file writes: a file is either complete or absent, never truncated."""
from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is fsynced and renamed.

    On any exception (or a kill) the target keeps its previous content and the
    temporary file is removed (or, after a kill, left as a hidden
    ``.<name>.<pid>.XXXXXXXX.tmp``). The writer's process id in the name lets a later
    cleanup tell a killed writer's file from a live one's
    (:func:`remove_dead_writers_temp_files`; for checkpoints
    :func:`resnet_backbone.io.checkpoint_io.remove_stale_temp_files`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.{os.getpid()}.', suffix='.tmp',
                               dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; keep open()'s permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


#: The name :func:`atomic_path` gives its temporary file: ``.<name>.<pid>.XXXXXXXX.tmp``
#: (mkstemp's 8 random characters). Names without a pid are older versions'.
TEMP_NAME = re.compile(r'^\.(?P<name>.+?)(?:\.(?P<pid>\d+))?\.[a-z0-9_]{8}\.tmp$')

#: A temporary file older than this (since its last write) is stale whoever wrote it:
#: no single write takes a day, and its pid may have been reused since.
STALE_TEMP_AGE_S = 24 * 3600


def writer_alive(pid: int) -> bool:
    """True if process ``pid`` runs on this host and is not this process (a process
    that is starting has no write in flight yet, and in containers a new run often
    gets the pid of the killed one)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except (OSError, OverflowError):
        return False
    try:  # Linux: a killed process its parent has not reaped yet is a zombie, not a writer
        return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):
        return True


def remove_dead_writers_temp_files(folder: str | Path, *, recursive: bool = True,
                                   only: Callable[[str], bool] | None = None
                                   ) -> list[Path]:
    """Remove the temporary files (:func:`atomic_path`'s ``.<name>.<pid>.XXXXXXXX.tmp``)
    that killed writers left under ``folder``; returns them, sorted.

    Only files of that pattern whose writer is gone are touched: the process ``<pid>``
    no longer runs on this host (or is this very process, which calls this before it
    writes anything), or the file was last written more than :data:`STALE_TEMP_AGE_S`
    ago. So the writes in flight of other live processes (the other ranks of the same
    run, another run in the same folder) are left alone. Names without a pid go by age
    only. The pid is this host's: call it only while no process of another host writes
    to ``folder`` (the dump calls it on rank 0 before the ranks' first collective).
    ``only``: a test of the target's ``<name>``; only matching files are considered.
    """
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    now = time.time()
    walk = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for parent, _, names in walk:
        for name in names:
            m = TEMP_NAME.match(name)
            if m is None or (only is not None and not only(m['name'])):
                continue
            p = Path(parent) / name
            try:
                st = p.lstat()
            except OSError:  # gone meanwhile: its writer renamed or removed it
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            old = now - st.st_mtime > STALE_TEMP_AGE_S
            if old or (m['pid'] is not None and not writer_alive(int(m['pid']))):
                p.unlink(missing_ok=True)
                removed.append(p)
    return sorted(removed)
