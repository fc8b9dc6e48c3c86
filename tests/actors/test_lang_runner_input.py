"""UserInputServer, the batch-input socket thread (docs/protocol.md §5.6), with a RecorderActor as its owner."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel_runner.actors.lang_runner.user_input import InputAbandoned, InputRequested, UserInputError, UserInputServer
from tests.support.waiting import Recorder, wait_until


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "input.sock"


@pytest.fixture
def server(sock_path: Path, recorder: Recorder) -> Iterator[UserInputServer]:
    srv = UserInputServer(sock_path, recorder.ref)
    srv.bind()
    srv.start()
    yield srv
    srv.stop()


def connect(path: Path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.settimeout(5)
    client.connect(str(path))
    return client


def test_each_connection_is_announced_and_answered_once(server: UserInputServer, recorder: Recorder) -> None:
    client = connect(server.path)
    request = recorder.wait_for(lambda m: isinstance(m, InputRequested), timeout=5)
    server.answer(request.conn_id, "héllo\n".encode())
    received = b""
    while chunk := client.recv(100):
        received += chunk
    assert received == "héllo\n".encode()  # then EOF: the server closed it
    client.close()


def test_a_client_that_hangs_up_is_reported(server: UserInputServer, recorder: Recorder) -> None:
    client = connect(server.path)
    request = recorder.wait_for(lambda m: isinstance(m, InputRequested), timeout=5)
    client.close()
    gone = recorder.wait_for(lambda m: isinstance(m, InputAbandoned), timeout=5)
    assert gone.conn_id == request.conn_id
    server.answer(request.conn_id, b"too late")  # ignored, no error


def test_a_stale_socket_file_is_replaced(sock_path: Path, recorder: Recorder) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock_path))
    stale.close()  # the file stays: a runner that died left it behind
    srv = UserInputServer(sock_path, recorder.ref)
    srv.bind()
    srv.start()
    try:
        connect(sock_path).close()
        recorder.wait_for(lambda m: isinstance(m, InputRequested), timeout=5)
    finally:
        srv.stop()
    assert not sock_path.exists()  # removed on stop, as it is ours


def test_a_regular_file_at_the_path_is_not_deleted(sock_path: Path, recorder: Recorder) -> None:
    sock_path.write_text("user data")
    srv = UserInputServer(sock_path, recorder.ref)
    with pytest.raises(UserInputError):
        srv.bind()
    srv.stop()
    assert sock_path.read_text() == "user data"


def test_stop_closes_waiting_clients(server: UserInputServer, recorder: Recorder) -> None:
    client = connect(server.path)
    recorder.wait_for(lambda m: isinstance(m, InputRequested), timeout=5)
    server.stop()
    assert client.recv(10) == b""
    wait_until(lambda: not server.is_alive(), timeout=2, what="the server thread to end")
    client.close()
