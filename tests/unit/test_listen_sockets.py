"""The API workers' listening sockets (hub.workers.bind): one per worker on the same port, so that the kernel
spreads connections arriving together over the workers instead of the first worker to wake taking them all."""

from __future__ import annotations

import socket

import pytest

from hub.workers import bind


def test_one_socket_per_worker_on_one_port_and_connections_spread_over_them() -> None:
    socks = bind("127.0.0.1", 0, 2)
    try:
        assert len(socks) == 2
        port = socks[0].getsockname()[1]
        assert port != 0 and socks[1].getsockname()[1] == port
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(32)]  # at once, as a load generator does
        accepted = []
        for sock in socks:
            sock.setblocking(False)
            n = 0
            while True:
                try:
                    conn, _ = sock.accept()
                except BlockingIOError:
                    break
                conn.close()
                n += 1
            accepted.append(n)
        assert sum(accepted) == 32
        assert min(accepted) >= 4, accepted  # all on one socket: 2**-31; fewer than 4 of 32: ~1e-5
        for client in clients:
            client.close()
    finally:
        for sock in socks:
            sock.close()


def test_a_port_in_use_fails_at_bind() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):  # the taken socket has no SO_REUSEPORT: no second server joins it
            bind("127.0.0.1", port, 2)


def test_a_second_hub_on_the_same_port_fails_instead_of_sharing_its_connections() -> None:
    socks = bind("127.0.0.1", 0, 2)
    try:
        with pytest.raises(OSError):
            bind("127.0.0.1", socks[0].getsockname()[1], 2)
    finally:
        for sock in socks:
            sock.close()
