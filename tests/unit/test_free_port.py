"""e2e.processes.free_port: ports for the local cluster's servers stay out of the kernel's ephemeral range, where
an outgoing connection can take one between the pick and the server's bind (CI: kube-controller-manager failed
with "address already in use" during a run that opened thousands of connections)."""

from __future__ import annotations

import socket
from typing import Any

from e2e import processes
from e2e.processes import _ephemeral_range, free_port


def test_ports_are_below_the_ephemeral_range_distinct_and_bindable() -> None:
    low, high = _ephemeral_range()
    assert 1024 < low <= high
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(p < low for p in ports), [p for p in ports if p >= low]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", ports[-1]))


def test_a_port_in_use_is_stepped_over(monkeypatch: Any) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))  # any port; free_port is made to draw it first
        busy.listen()
        used = busy.getsockname()[1]
        spare = free_port()
        draws = iter([used, spare])

        class Draw:
            def randrange(self, a: int, b: int) -> int:
                return next(draws)

        monkeypatch.setattr(processes, "_PICK", Draw())
        processes._HANDED_OUT.discard(spare)
        assert free_port() == spare
