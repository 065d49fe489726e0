"""Child processes that die with the process that started them.

A parent killed outright (``kill -9``, the OOM killer) runs no clean-up of its own, so a
child nothing stops outlives it: a broker still holding its port and data directory, a
gateway on the port the next ``relay up`` asks for.  On Linux, ``PR_SET_PDEATHSIG`` has
the kernel send such a child SIGTERM, which every relay process takes as a normal stop.
Elsewhere there is no such call and children are left as they are.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen`` (None where the kernel cannot do it).

    The kernel watches the *thread* that forks, not the process: a child spawned from a
    pool's thread would be stopped when that thread ends.  So only the main thread's
    children get it (None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    parent = os.getpid()

    def _in_child() -> None:
        if prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            return  # refused: the child runs on, as it would without this
        if os.getppid() != parent:  # the parent died between the fork and the call
            os.kill(os.getpid(), signal.SIGTERM)

    return _in_child
