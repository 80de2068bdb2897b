"""A configuration loaded from a file or a directory of YAML files, reloaded when
the files change, without a restart.

A load either fully succeeds (the new value is swapped in atomically: readers
always see one whole configuration) or is rejected with a logged error naming
the file and the problem, and the last good value stays live. Polling a (name,
mtime, size) snapshot works for plain edits, atomic renames and Kubernetes
ConfigMap symlink swaps alike. Used for rate-limit rules and tenant policies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from services.common.errors import ConfigError

log = logging.getLogger("safeguards.config")

T = TypeVar("T")


def yaml_files(path: Path) -> list[Path]:
    """A file, or every *.yaml / *.yml directly inside a directory (sorted)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if path.is_file():
        return [path]
    raise ConfigError(f"{path}: no such file or directory")


class ReloadingConfig(Generic[T]):
    """`current` is the live value; `load(path)` builds a new one or raises ConfigError."""

    def __init__(
        self,
        path: Path,
        load: Callable[[Path], T],
        *,
        poll_seconds: float = 1.0,
        on_load: Callable[[str, T | None], None] = lambda result, value: None,
        describe: Callable[[T], dict] = lambda value: {},
    ) -> None:
        self.path = path
        self._load = load
        self._poll = poll_seconds
        self._on_load = on_load
        self._describe = describe
        self._snapshot: tuple = ()
        self._task: asyncio.Task | None = None
        self.current: T | None = None
        self.last_error = ""

    def _fingerprint(self) -> tuple:
        try:
            files = yaml_files(self.path)
        except ConfigError:
            return ("missing",)
        out = []
        for f in files:
            try:
                st = f.stat()
            except OSError:
                continue
            out.append((f.name, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def load_initial(self) -> T:
        """Load at start; a broken config at start is fatal (there is no last good)."""
        self._snapshot = self._fingerprint()
        self.current = self._load(self.path)
        self._on_load("ok", self.current)
        log.info("config loaded", extra={"path": str(self.path), **self._describe(self.current)})
        return self.current

    def reload_if_changed(self) -> bool:
        snap = self._fingerprint()
        if snap == self._snapshot:
            return False
        self._snapshot = snap
        try:
            new = self._load(self.path)
        except ConfigError as exc:
            self.last_error = str(exc)
            self._on_load("error", None)
            log.error("config rejected; last good config stays live", extra={"error": str(exc)})
            return False
        self.current = new
        self.last_error = ""
        self._on_load("ok", new)
        log.info("config reloaded", extra={"path": str(self.path), **self._describe(new)})
        return True

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="config-watch")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            try:
                self.reload_if_changed()
            except Exception:  # never let the watcher die
                log.exception("config watcher failed")
