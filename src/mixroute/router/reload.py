"""The live config: loaded once, then swapped when the file changes (watchfiles).

A reload that fails validation is logged and ignored: the router keeps serving with the
last good config. Readers take `source.current` once per request, so a swap never
changes a request midway.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from mixroute.errors import ConfigError
from mixroute.logs import kv
from mixroute.router.config import RouterConfig, load_config
from mixroute.router.metrics import RouterMetrics

log = logging.getLogger(__name__)


class ConfigSource:
    def __init__(self, path: str | Path | None, config: RouterConfig | None = None) -> None:
        self.path = Path(path) if path is not None else None
        if config is None:
            if self.path is None:
                raise ConfigError("ConfigSource needs a path or a config")
            config = load_config(self.path)
        self.current: RouterConfig = config
        self.version = 1

    def reload(self, metrics: RouterMetrics | None = None) -> bool:
        """Re-read the file; True if the new config is now live."""
        assert self.path is not None
        try:
            config = load_config(self.path)
        except ConfigError as exc:
            log.error("config reload rejected, keeping the previous config: %s", exc)
            if metrics:
                metrics.config_reloads.labels("rejected").inc()
            return False
        if config != self.current:
            old = self.current.cache
            if (config.cache.backend, config.cache.milvus) != (old.backend, old.milvus):
                log.warning(
                    "config reload: cache.backend and cache.milvus take effect at the next "
                    "restart; the cache keeps using %s until then", old.backend,
                )
            self.current = config
            self.version += 1
            log.info("config reloaded %s", kv(path=self.path, version=self.version))
        if metrics:
            metrics.config_reloads.labels("applied").inc()
        return True

    async def watch(self, metrics: RouterMetrics | None = None, stop: asyncio.Event | None = None) -> None:
        """Reload on every change of the file until `stop` is set (or the task is cancelled).

        Watches the file's own directory (not the file, not subdirectories): editors that
        replace the file by rename are seen, and so is a Kubernetes ConfigMap update, which
        swaps the directory's `..data` symlink (the mounted file is a link through it).
        Not recursive, so log files written in subdirectories never wake it. A change that
        leaves the parsed config equal is not a reload (`reload` compares).
        """
        if self.path is None:
            return
        from watchfiles import awatch

        directory = self.path.absolute().parent
        name = self.path.name

        def is_config(_: object, path: str) -> bool:
            # Other files there (a log file next to the config) must not wake the watcher:
            # watchfiles logs every wake-up, which writes the log, which wakes it again.
            entry = Path(path).name
            return entry == name or entry.startswith("..")

        async for _ in awatch(
            directory, watch_filter=is_config, stop_event=stop, debounce=200, step=50, recursive=False
        ):
            self.reload(metrics)
