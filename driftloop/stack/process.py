"""Background server processes of the local stack: :class:`foundation.supervisor.DetachedServer` raising
:class:`~driftloop.stack.exceptions.StackError` (run folder, PID file, log file, readiness wait, stop by PID)."""

from __future__ import annotations

from typing import ClassVar

from driftloop.stack.exceptions import StackError
from foundation.supervisor import DetachedServer


class ServerProcess(DetachedServer):
    """One server of the stack, known by its run folder (``<run_dir>/<name>``); failures raise ``StackError``."""

    error: ClassVar[type[Exception]] = StackError
