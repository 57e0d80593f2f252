"""The control socket protocol: one JSON object per line; bad requests get a
clear error reply and leave the server serving."""
import json
import os
import socket
import stat

from dataplane.control import ControlServer


def handler(op, args):
    if op == "echo":
        return args
    if op == "boom":
        raise ValueError("bad value for x")
    raise ValueError(f"unknown operation {op!r}")


def exchange(server, client, payload):
    client.sendall(payload)
    for fd in list(server.clients):
        server.ready(fd)
    client.settimeout(2)
    buf = b""
    while not buf.endswith(b"\n"):
        buf += client.recv(65536)
    return [json.loads(line) for line in buf.splitlines()]


def test_requests_errors_and_permissions(tmp_path):
    path = tmp_path / "ctl.sock"
    server = ControlServer(path, handler)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600          # root-only
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(str(path))
        server.ready(server.sock.fileno())                            # accept
        assert exchange(server, c, b'{"op": "echo", "x": 1}\n') == [{"ok": True, "result": {"x": 1}}]
        [r] = exchange(server, c, b'{"op": "echo", "x": \n')          # truncated JSON
        assert r["ok"] is False and "malformed JSON" in r["error"]
        [r] = exchange(server, c, b'[1, 2]\n')
        assert r == {"ok": False, "error": 'request must be a JSON object with a string "op"'}
        [r] = exchange(server, c, b'{"op": "boom"}\n')
        assert r == {"ok": False, "error": "boom: bad value for x"}
        [r] = exchange(server, c, b'{"op": "nope"}\n')
        assert r["ok"] is False and "unknown operation" in r["error"]
        # still serving, and two requests in one write get two replies
        assert exchange(server, c, b'{"op": "echo", "a": 1}\n{"op": "echo", "b": 2}\n') == [
            {"ok": True, "result": {"a": 1}}, {"ok": True, "result": {"b": 2}}]
        c.close()
    finally:
        server.close()
    assert not path.exists()


def test_agent_dying_mid_request_is_a_control_error(tmp_path):
    """An agent killed while a request is in flight: a clear ControlError, not a traceback."""
    import threading

    import pytest

    from dataplane.control import ControlError, request
    path = str(tmp_path / "dying.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)

    def die():                                  # accept, leave the request unread, go away
        c, _ = srv.accept()
        c.recv(1)
        c.close()
    t = threading.Thread(target=die)
    t.start()
    try:
        with pytest.raises(ControlError, match="closed the connection"):
            request(path, "status", timeout=5)
    finally:
        t.join(5)
        srv.close()
