"""`Reflector`: list + watch of one resource on a thread, feeding a handler (the informer of client-go)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import urllib3

from kubeio.client import ApiError, KubeClient, Query

log = logging.getLogger(__name__)


class Reflector(threading.Thread):
    """list + watch of one resource, feeding a handler; re-lists after 410 Gone or any watch failure.

    `on_list(items)` receives the full list (initially and after every re-list) and
    `on_event(type, object)` every watch event but bookmarks; both run on this thread. With `since` (the
    resourceVersion of a list the caller already loaded) the first watch starts there, without a list of its own.
    """

    def __init__(
        self,
        api: KubeClient,
        path: str,
        on_list: Callable[[list[dict[str, Any]]], object],
        on_event: Callable[[str, dict[str, Any]], None],
        *,
        query: Query | None = None,
        watch_timeout: int = 300,
        name: str | None = None,
        since: str = "",
    ) -> None:
        super().__init__(name=name or f"reflector {path}", daemon=True)
        self.api = api
        self.path = path
        self.query = query
        self.on_list = on_list
        self.on_event = on_event
        self.watch_timeout = watch_timeout
        self.stopping = threading.Event()
        self.listed = threading.Event()
        self.relists = 0
        self.since = since

    def stop(self) -> None:
        self.stopping.set()

    def run(self) -> None:
        backoff = 0.2
        rv = self.since
        while not self.stopping.is_set():
            try:
                if not rv:
                    items, rv = self.api.list(self.path, self.query)
                    self.on_list(items)
                self.listed.set()
                backoff = 0.2
                while not self.stopping.is_set():
                    for event in self.api.watch(self.path, rv, self.query, self.watch_timeout):
                        if self.stopping.is_set():
                            return
                        obj = event.get("object") or {}
                        new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                        if new_rv:
                            rv = str(new_rv)
                        if event.get("type") != "BOOKMARK":
                            self.on_event(str(event.get("type")), obj)
                    # the server closed the watch at its timeout: resume from the last resourceVersion
            except Exception as exc:
                if self.stopping.is_set():
                    return
                rv = ""
                if isinstance(exc, ApiError) and exc.status == 410:
                    log.info("%s: resourceVersion too old (410 Gone); re-listing", self.path)
                else:
                    # an API error, or a stream that broke (an API server restart, a proxy): one line; a handler
                    # that failed: its traceback
                    if isinstance(exc, ApiError | urllib3.exceptions.HTTPError | OSError):
                        log.warning("%s: list/watch failed (%s); re-listing in %.1f s", self.path, exc, backoff)
                    else:
                        log.exception("%s: handler failed; re-listing in %.1f s", self.path, backoff)
                    self.stopping.wait(backoff)
                    backoff = min(backoff * 2, 10.0)
                self.relists += 1
            else:
                return
