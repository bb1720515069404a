"""resnet_backbone.io.fileio: who counts as a live writer of a temporary file."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from resnet_backbone.io.fileio import remove_dead_writers_temp_files, writer_alive


def test_a_killed_unreaped_writer_is_dead(tmp_path):
    """A writer killed while its parent has not reaped it yet (a zombie, as under a
    launcher that is itself stuck) still answers ``kill(pid, 0)``: it must count as
    dead, or its temp files stay forever. A live process counts as alive; this process
    does not (it has written nothing yet when it sweeps)."""
    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        assert writer_alive(child.pid)
        tmp = tmp_path / f'.a.png.safetensors.{child.pid}.abcd1234.tmp'
        tmp.write_bytes(b'x')
        os.kill(child.pid, signal.SIGKILL)
        for _ in range(100):  # not waited for: a zombie until wait()
            with open(f'/proc/{child.pid}/stat') as f:
                if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
                    break
            time.sleep(0.05)
        assert not writer_alive(child.pid)
        assert remove_dead_writers_temp_files(tmp_path) == [tmp]
    finally:
        child.kill()
        child.wait()
    assert not writer_alive(os.getpid())
