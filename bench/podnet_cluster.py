"""A podnet cluster for a benchmark: up from a spec text in a private run
directory, always down (and the directory gone) afterwards."""
import os
import shutil
import tempfile
from pathlib import Path


class PodnetCluster:
    def __init__(self, spec_text):
        self.spec_text = spec_text
        self.state = None

    def __enter__(self):
        from dataplane import cluster
        self.tmp = tempfile.mkdtemp(prefix="pnbench-")
        os.environ["PODNET_RUN_DIR"] = f"{self.tmp}/run"
        os.environ["PODNET_STATE_DIR"] = f"{self.tmp}/state"
        spec = Path(self.tmp) / "spec.yaml"
        spec.write_text(self.spec_text)
        try:
            self.state = cluster.up(str(spec), progress=lambda *_: None)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        return self

    def pod_ns(self, pod):
        return f"{self.state['cluster']}-pod-{pod}"

    def request(self, node, op, **args):
        from dataplane.control import request
        return request(self.state["nodes"][node]["socket"], op, **args)

    def __exit__(self, *exc):
        from dataplane import cluster
        cluster.down(quiet=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return False
