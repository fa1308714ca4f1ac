"""`gpupool-extender`: wire settings, the pool model, the cluster cache and the HTTP app together."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from extender.kube import API_CONNECTIONS, GPUNODES, GPUQUEUES, NODES, PODS, KubeAPI, PodAPI
from extender.metrics import Metrics
from extender.resize import Resizer
from extender.service import PoolService
from extender.settings import ExtenderSettings
from gpupool import fragmentation
from gpupool.assignment import Keys
from gpupool.errors import AssignmentError
from gpupool.fragmentation import Workload
from gpupool.pool import PoolConfigError, build_pool
from gpupool.signing_key import KeyRing
from kubeio.reflector import Reflector

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("gpupool.extender")

#: how often the pods a bind could not confirm (`PoolService.unconfirmed`) are read again
RECHECK_SECONDS = 10.0


def read_key(path: str) -> KeyRing:
    """The signing keys (a directory in the Secret layout, or one key file), re-read on change."""
    try:
        return KeyRing(path)
    except AssignmentError as exc:
        raise SystemExit(str(exc)) from None


def fragmentation_gauge(service: PoolService, workload: Workload) -> Callable[[], float | None]:
    """F_N(M) over the service's ledger; the one place to switch when the measure changes."""

    def value() -> float | None:
        with service.lock:
            return float(fragmentation.cluster_fragmentation(service.ledger, workload).amount)

    return value


@dataclass
class Extender:
    """Everything one extender process runs; `start`/`stop` manage the watch threads."""

    settings: ExtenderSettings
    service: PoolService
    api: KubeAPI | None
    reflectors: list[Reflector] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        if self.api is None:
            return
        s = self.service
        if isinstance(s.key, KeyRing):  # the mounted Secret changed: quarantined pods are read again
            s.key.watch(self.stopping, s.on_keys_changed)
        m = s.metrics
        resizer = Resizer(s)

        def counted(resource: str, handler: Callable[[list[dict[str, Any]]], None]) -> Any:
            first = [True]

            def on_list(items: list[dict[str, Any]]) -> None:
                if not first[0]:
                    m.relists.labels(resource).inc()
                first[0] = False
                handler(items)

            return on_list

        t = self.settings.watch_timeout_seconds
        self.reflectors = [
            Reflector(self.api, NODES, counted("nodes", s.on_node_list), s.on_node_event, watch_timeout=t),
            Reflector(
                self.api,
                GPUNODES,
                counted("gpunodes", s.on_gpunode_list),
                s.on_gpunode_event,
                watch_timeout=t,
            ),
            # pod events go through the resizer (extender/resize.py): the service first, then pending resizes
            Reflector(self.api, PODS, counted("pods", resizer.on_pod_list), resizer.on_pod_event, watch_timeout=t),
            Reflector(
                self.api, GPUQUEUES, counted("gpuqueues", s.on_gpuqueue_list), s.on_gpuqueue_event, watch_timeout=t
            ),
        ]
        s.expect_gpuqueues()
        for r in self.reflectors:
            r.start()
        threading.Thread(target=self._recheck, name="gpupool-recheck", daemon=True).start()

    def _recheck(self) -> None:
        """Every `RECHECK_SECONDS`, read again the pods a bind could not confirm (`PoolService.unconfirmed`)."""
        while not self.stopping.wait(RECHECK_SECONDS):
            try:
                self.service.recheck_unconfirmed()
            except Exception:  # the next round tries again; the watches and the verbs go on
                log.exception("re-reading unconfirmed pods failed")

    def stop(self) -> None:
        self.stopping.set()
        for r in self.reflectors:
            r.stop()
        if self.api is not None:
            self.api.close_streams()
        for r in self.reflectors:
            r.join(5)


def build(settings: ExtenderSettings, api: PodAPI | None = None, key: Keys | None = None) -> Extender:
    """Build the service from settings; `api` None connects to the cluster from the settings.

    Raises `PoolConfigError` for pool settings that cannot work (`main` prints it and exits).
    """
    pool = build_pool(settings.pool_config())
    kube: KubeAPI | None = None
    if api is None:
        kube = KubeAPI.connect(settings.kubeconfig, settings.in_cluster, settings.api_timeout_seconds,
                               pool_size=API_CONNECTIONS)  # fmt: skip
        api = kube
    elif isinstance(api, KubeAPI):
        kube = api
    metrics = Metrics()
    service = PoolService(pool.ledger, pool.placer, key if key is not None else read_key(settings.signing_key_file),
                          api, metrics)  # fmt: skip
    service.identity_wait_seconds = settings.identity_wait_seconds
    service.narrow_filter = settings.narrow_filter
    metrics.attach(service.cache_stats, fragmentation_gauge(service, pool.workload))
    return Extender(settings, service, kube)


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run the servers on uvloop where uvicorn[standard] installed it (Linux), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def tune_gc() -> None:
    """Keep the cyclic GC out of the verbs' tail latency.

    The cache holds one dict per pod and the ledger one object per slice; with the default
    thresholds the collector walks them all every few hundred allocations (30-60 ms pauses at
    40,000 slices). Objects alive now are frozen out of collection and young collections are rarer.
    """
    gc.set_threshold(50_000, 50, 100)
    gc.freeze()


def http_server(app: Any, host: str, port: int, log_level: str) -> uvicorn.Server:
    """One listener as `gpupool-extender` runs it: uvicorn (httptools where installed, as uvicorn[standard] does),
    no access log, no proxy-header rewriting (kube-scheduler calls from loopback, probes come from the kubelet)."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                                         proxy_headers=False))  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    from extender.app import create_app, create_probe_app

    settings = ExtenderSettings.from_args(argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        extender = build(settings)
    except PoolConfigError as exc:
        raise SystemExit(f"gpupool-extender: {exc}") from None
    app = create_app(extender.service, url_prefix=settings.url_prefix, max_body_bytes=settings.max_body_bytes)
    extender.start()
    tune_gc()
    level = settings.log_level.lower()
    servers = [http_server(app, settings.host, settings.port, level)]
    if settings.metrics_port:
        probes = create_probe_app(extender.service)
        servers.append(http_server(probes, settings.metrics_host, settings.metrics_port, level))

    async def serve() -> None:
        await asyncio.gather(*(server.serve() for server in servers))

    try:
        _run(serve())
    finally:
        extender.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
