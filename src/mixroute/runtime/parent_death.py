"""Children that die with their parent: argv wrapped so the kernel sends SIGTERM to the
child when the process that started it goes away, even by `kill -9` (Linux).

The request (PR_SET_PDEATHSIG) is made by a tiny exec wrapper rather than a
`preexec_fn`: with a `preexec_fn`, Python runs every library's at-fork hooks in the
child, and gRPC's (loaded by the etcd client) aborts there when its threads are busy.
The kernel ties the signal to the *thread* that forked the child, so start such children
from a thread that lives as long as the parent (the main thread or the event loop's).
Elsewhere than Linux the argv is returned unchanged: clean shutdown still stops children.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence

_EXEC_WRAPPER = """
import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG, kept across exec
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)  # the parent died before the request took effect
os.execvp(sys.argv[2], sys.argv[2:])
"""


def die_with_parent(argv: Sequence[str]) -> list[str]:
    """`argv` behind the parent-death wrapper (Linux), or as is.

    Raises FileNotFoundError, as starting it directly would, when `argv[0]` is not an
    executable: behind the wrapper that error would only show as the child's exit code.
    """
    if not argv or shutil.which(argv[0]) is None:
        raise FileNotFoundError(f"no executable {argv[0] if argv else '(empty command)'!r}")
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-S", "-c", _EXEC_WRAPPER, str(os.getpid()), *argv]
