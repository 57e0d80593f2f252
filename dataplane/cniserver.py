"""The CNI server: podnet-cni calls answered by a resident process.

A CNI plugin is a new process for every ADD and DEL, and a Python one pays
its start-up and imports each time, several times the whole ADD of the
reference plugins. So the first node's agent (resident anyway, restarted by
`podnet up` when it dies) serves RUN_DIR/cni.sock on a thread of its own,
and the podnet-cni that `podnet cni install` puts in the bin dir is a small
C client of it (dataplane/cni_client.c) that falls back to the Python
plugin when the socket does not answer. Each call runs cni.run() here, with
the modules it needs already imported; the cluster operations it makes are
the Python plugin's own (cluster.pod_add and friends, which take the run
directory's lock), so both paths behave the same. Calls are served one at
a time, as they would queue on that lock anyway.

The thread only does control work (Python, the GIL): the workers forward on
without it. Wire format: see cni_client.c."""
import json
import os
import socket
import struct
import threading

MAGIC = b"PNC1"
MAX_FIELD = 16 << 20
TIMEOUT = 120.0            # a call's whole time, reading the request to answering


class CniServer:
    def __init__(self, path, host_netns=None, log=print):
        self.path = path
        self.log = log
        self.served = 0
        self.errors = 0
        try:
            os.unlink(path)                      # a crashed agent's
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, 0o600)
        self.sock.listen(16)
        from dataplane import cni                 # imported now, not on the first call
        self.cni = cni
        cni.HOST_NETNS = host_netns               # (dev, ino): a CNI_NETNS the plugin must refuse
        self.thread = threading.Thread(target=self._serve, name="cni-server", daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return                              # closed: the agent is stopping
            with conn:
                try:
                    conn.settimeout(TIMEOUT)
                    env, stdin = self._request(conn)
                    rc, obj = self.cni.run(env, stdin)
                    out = (json.dumps(obj) + "\n").encode() if obj is not None else b""
                    conn.sendall(struct.pack("=II", rc, len(out)) + out)
                    self.served += 1
                except (OSError, ValueError) as e:  # a client that went away or spoke nonsense
                    self.errors += 1
                    self.log(f"cni server: {e}")

    @staticmethod
    def _request(conn):
        def exact(n):
            buf = bytearray()
            while len(buf) < n:
                got = conn.recv(n - len(buf))
                if not got:
                    raise ValueError("the client closed mid-request")
                buf += got
            return bytes(buf)

        def field():
            (n,) = struct.unpack("=I", exact(4))
            if n > MAX_FIELD:
                raise ValueError(f"a request field of {n} bytes")
            return exact(n)
        if exact(4) != MAGIC:
            raise ValueError("not a podnet-cni request")
        (count,) = struct.unpack("=I", exact(4))
        if count > 64:
            raise ValueError(f"{count} environment entries")
        env = {}
        for _ in range(count):
            k, sep, v = field().decode("utf-8", "replace").partition("=")
            if sep and k.startswith("CNI_"):
                env[k] = v
        return env, field()

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
