"""Child processes of a local stack: one `artgen` subcommand each, in its own process group."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.05) -> T:
    """The first truthy value `predicate` returns; TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


class Proc:
    """One `artgen ...` child, its output in `log_path` (or on this terminal when that is None)."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str],
        log_path: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self._log: IO[bytes] | None = log_path.open("ab") if log_path is not None else None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "launch.cli", *args],
            env=dict(env),
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log is not None else None,
            # Own process group: a Ctrl-C in the terminal reaches the launcher alone, which stops the
            # parts in order, and a kill can reach a worker's pool processes too.
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        """Its whole log so far ("" when its output goes to the terminal)."""
        if self.log_path is None:
            return ""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 4000) -> str:
        """The end of its log ("" when its output goes to the terminal)."""
        return self.log()[-chars:]

    def signal_group(self, sig: int) -> None:
        """Signal the process and its children (Celery's pool processes)."""
        if self.alive():
            os.killpg(self.process.pid, sig)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (as `docker stop` sends it: a worker hands its jobs back), then SIGKILL to the group."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", self.name, timeout_s)
                self.signal_group(signal.SIGKILL)
                self.process.wait()
        if self._log is not None:
            self._log.close()
