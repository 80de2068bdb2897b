"""Holds the live rate-limit configuration and reloads it when files change.

A load either fully succeeds (the new config is swapped in atomically) or is
rejected with a logged error naming the file and the problem, and the last good
configuration stays live. Polling a (name, mtime, size) snapshot works for plain
edits, atomic renames and Kubernetes ConfigMap symlink swaps alike.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from services.common.errors import ConfigError
from services.ratelimit import config
from services.ratelimit.stats import LimiterStats

log = logging.getLogger("safeguards.ratelimit.config")


class ConfigStore:
    def __init__(self, path: Path, stats: LimiterStats, poll_seconds: float = 1.0) -> None:
        self.path = path
        self._stats = stats
        self._poll = poll_seconds
        self._snapshot: tuple = ()
        self._task: asyncio.Task | None = None
        self.current = config.RateLimitConfig(domains={})
        self.last_error: str = ""

    def _fingerprint(self) -> tuple:
        try:
            files = config.config_files(self.path)
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

    def load_initial(self) -> None:
        """Load at start; a broken config at start is fatal (there is no last good)."""
        self._snapshot = self._fingerprint()
        self.current = config.load(self.path)
        self._stats.config_loads.labels("ok").inc()
        self._stats.config_rules.set(len(self.current.domains))
        log.info("config loaded", extra={"domains": sorted(self.current.domains), "version": self.current.version})

    def reload_if_changed(self) -> bool:
        snap = self._fingerprint()
        if snap == self._snapshot:
            return False
        self._snapshot = snap
        try:
            new = config.load(self.path)
        except ConfigError as exc:
            self.last_error = str(exc)
            self._stats.config_loads.labels("error").inc()
            log.error("config rejected; last good config stays live", extra={"error": str(exc)})
            return False
        self.current = new
        self.last_error = ""
        self._stats.config_loads.labels("ok").inc()
        self._stats.config_rules.set(len(new.domains))
        log.info("config reloaded", extra={"domains": sorted(new.domains), "version": new.version})
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
