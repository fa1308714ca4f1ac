"""`gpupool-controller`: the kopf operator (queues, quota, preemption, webhooks, status, GC)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from controller.settings import ControllerSettings
from gpupool.pool import PoolConfigError


def main(argv: Sequence[str] | None = None) -> int:
    settings = ControllerSettings.from_args(argv)
    try:
        settings.pool_config()  # the pool settings fail here, before kopf starts, with the setting named
    except PoolConfigError as exc:
        raise SystemExit(f"gpupool-controller: {exc}") from None
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if settings.kubeconfig:
        os.environ["KUBECONFIG"] = settings.kubeconfig  # kopf's own login reads it
    import kopf

    from controller import handlers, metrics

    handlers.SETTINGS = settings
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port, registry=metrics.REGISTRY)
    asyncio.run(kopf.operator(clusterwide=True, standalone=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
