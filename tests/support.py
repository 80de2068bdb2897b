"""Test support: real processes on real sockets (services, redis-server, the
Tansu Kafka broker), started on free ports and always cleaned up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from tools.embedded import EmbeddedKafka, EmbeddedRedis, die_with_parent, free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
__all__ = ["ROOT", "EmbeddedKafka", "PrivateRedis", "ServiceProcess", "SourceForwarder", "free_port", "wait_port"]


class ServiceProcess:
    """A service started as `python -m <module> ...`; waits for its
    '<name> listening on HOST:PORT' line; keeps stdout/stderr for assertions."""

    def __init__(self, module: str, args: Sequence[str], env: dict[str, str] | None = None, name: str = "") -> None:
        self.module = module
        self.args = list(args)
        self.name = name or module.rsplit(".", 1)[-1]
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.proc: subprocess.Popen | None = None
        self.address = ""
        self.stdout_lines: list[str] = []
        self._log = tempfile.NamedTemporaryFile(prefix=f"{self.name}-", suffix=".log", delete=False)
        self._ready = threading.Event()

    @property
    def log_path(self) -> Path:
        return Path(self._log.name)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self, timeout: float = 20.0) -> ServiceProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            preexec_fn=die_with_parent,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"{self.name} did not start in {timeout}s; log:\n{self.logs()[-3000:]}")
        if not self.address:
            raise RuntimeError(f"{self.name} exited at start; log:\n{self.logs()[-3000:]}")
        return self

    def _pump(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            self.stdout_lines.append(line)
            if " listening on " in line and not self.address:
                self.address = line.split(" listening on ", 1)[1].split()[0]
                self._ready.set()
        self._ready.set()

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> int:
        assert self.proc
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 20.0) -> int | None:
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PrivateRedis(EmbeddedRedis):
    """A redis-server of our own on a free port, which a test may stop and restart
    (never the machine's shared one)."""


class SourceForwarder:
    """A TCP forwarder whose connections to the target leave from `source` (another
    loopback address): the server sees another caller."""

    def __init__(self, target: str, source: str) -> None:
        host, _, port = target.rpartition(":")
        self.target, self.source = (host, int(port)), source
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, source_address=(self.source, 0))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()
