"""`gpupool-deviceplugin`: the device plugin / node agent (DaemonSet), or `--multi-node` fake publisher."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from pydantic import ValidationError

from deviceplugin.agent import Agent, MultiNodeAgent, make_inventory, read_key
from deviceplugin.inventory import InventoryError
from deviceplugin.kube import Kube, load_api_client
from deviceplugin.settings import DevicePluginSettings

log = logging.getLogger("deviceplugin")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = DevicePluginSettings.from_args(argv)
    except ValidationError as exc:
        print(f"gpupool-deviceplugin: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"gpupool-deviceplugin: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    kube = Kube(load_api_client(settings.kubeconfig), timeout_s=settings.api_timeout_seconds)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    if settings.multi_node:
        agent = MultiNodeAgent(settings, kube)
        agent.stop_event = stop
        log.info(
            "multi-node mode: publishing %d fake nodes from %s", len(agent.inventory.nodes), settings.fake_inventory
        )
        agent.run()
        return 0

    try:
        inventory = make_inventory(settings)
    except InventoryError as exc:
        log.error("%s", exc)
        return 1
    node_agent = Agent(settings, kube, inventory, read_key(settings.signing_key_file))
    node_agent.start()
    log.info(
        "node agent for %s: %d GPUs, backend %s, plugin dir %s",
        settings.node_name,
        len(inventory.gpus()),
        settings.backend.value,
        settings.plugin_dir,
    )
    stop.wait()
    node_agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
