"""A podnet cluster for a benchmark: up from a spec text in a private run
directory, always down (and the directory gone) afterwards.

Several can be up at once (one per worker count, say), each with its own
cluster name and CIDRs in its spec. The podnet library finds a cluster's state
through PODNET_RUN_DIR / PODNET_STATE_DIR, so each instance sets them to its
own directories for its up and its down: without that, taking down the first
of two clusters would read the second one's state and leave the first up."""
import os
import shutil
import tempfile
from pathlib import Path

ENV = ("PODNET_RUN_DIR", "PODNET_STATE_DIR")


class PodnetCluster:
    def __init__(self, spec_text, workers=None):
        """workers: forwarding threads per node, as `podnet up --workers N`
        (None: the spec's cluster.workers)."""
        self.spec_text = spec_text
        self.workers = workers
        self.state = None

    def _own_env(self):
        os.environ["PODNET_RUN_DIR"] = f"{self.tmp}/run"
        os.environ["PODNET_STATE_DIR"] = f"{self.tmp}/state"

    def _restore_env(self):
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def __enter__(self):
        from dataplane import cluster
        self.tmp = tempfile.mkdtemp(prefix="pnbench-")
        # what was there before: restored on exit, so clusters nested in an
        # ExitStack leave the environment as they found it, last first
        self._saved_env = {k: os.environ.get(k) for k in ENV}
        # left set while up: `podnet` commands a benchmark runs (env=os.environ)
        # address the cluster entered last
        self._own_env()
        spec = Path(self.tmp) / "spec.yaml"
        spec.write_text(self.spec_text)
        try:
            kw = {} if self.workers is None else {"workers": self.workers}
            self.state = cluster.up(str(spec), progress=lambda *_: None, **kw)
        except BaseException:
            self._restore_env()
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        return self

    def pod_ns(self, pod):
        return self.state.pods[pod].netns

    def request(self, node, op, **args):
        from dataplane.control import request
        return request(self.state.nodes[node].socket, op, **args)

    def agent_pids(self):
        return {node: n.pid for node, n in self.state.nodes.items()}

    def __exit__(self, *exc):
        from dataplane import cluster
        self._own_env()                   # this cluster's state, whichever was entered last
        try:
            cluster.down(quiet=True)
        finally:
            self._restore_env()
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False
