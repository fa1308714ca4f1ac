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
    if settings.webhook_enabled and not (settings.webhook_cert_file and settings.webhook_key_file):
        raise SystemExit("gpupool-controller: the webhooks serve TLS: set --webhook-cert-file and --webhook-key-file "
                         "(GPUPOOL_WEBHOOK_CERT_FILE, GPUPOOL_WEBHOOK_KEY_FILE), or --webhook-enabled false")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # kopf logs "Handler 'pod_event' succeeded." at INFO for every watch event (a line per pod change, a
        # few percent of the controller's CPU in a burst); its warnings and errors stay, DEBUG shows it all
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if settings.kubeconfig:
        os.environ["KUBECONFIG"] = settings.kubeconfig  # kopf's own login reads it
    import kopf

    from controller import handlers, metrics, probes

    handlers.SETTINGS = settings
    if settings.metrics_port:
        probes.serve("0.0.0.0", settings.metrics_port, metrics.REGISTRY, handlers.readiness)
    asyncio.run(kopf.operator(clusterwide=True, standalone=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
