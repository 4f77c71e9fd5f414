"""``bench.procs.free_port``, which the benchmarks and the integration tests give to the
processes they start: a port outside the kernel's ephemeral range, free when chosen."""

from __future__ import annotations

import random
import socket

from bench import procs


class _Scripted(random.Random):
    """Gives the listed ports in turn."""

    def __init__(self, ports: list[int]) -> None:
        super().__init__(0)
        self.ports = ports

    def randint(self, a: int, b: int) -> int:
        return self.ports.pop(0)


def test_a_free_port_is_outside_the_ephemeral_range_and_binds() -> None:
    """No outgoing connection can take the port before its process binds it: the kernel
    gives those local ports from the ephemeral range only."""
    low, high = procs.ephemeral_ports()
    for seed in range(20):
        port = procs.free_port(random.Random(seed))
        assert not low <= port <= high
        assert port >= procs.LOWEST_PORT
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_something_listens_on_is_passed_over() -> None:
    """A port that does not bind now is skipped for the next pick."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        free = procs.free_port(random.Random(1))
        assert procs.free_port(_Scripted([busy, free])) == free
