"""`mixroute up`'s port checks against real sockets."""

from __future__ import annotations

import socket

from mixroute.up.ports import is_port_free


def test_a_listening_port_is_taken_and_time_wait_connections_do_not_hold_it():
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    assert not is_port_free(port)
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = server.accept()
    accepted.close()  # the server side closes first: its end of the connection is in TIME_WAIT
    client.close()
    server.close()
    assert is_port_free(port)  # as a restarted server would find it
