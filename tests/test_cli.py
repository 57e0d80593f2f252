"""The CLI entry points run and print what they claim."""
import subprocess
import sys

from dataplane import bridge_demo


def test_bridge_demo_output_and_state():
    lines = []
    dp = bridge_demo.run(out=lines.append)
    text = "\n".join(lines)
    assert "in port 0 -> 1, 2, 3" in text            # the ARP broadcast flooded
    assert "pod-a ping pod-b (follows the move)" in text and "in port 0 -> 2" in text
    assert "drop.runt" in text
    c = dp.counters()
    assert c["fdb"]["moved"] == 1 and c["drops"]["runt"] == 1 and c["fdb"]["aged"] == 3


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "dataplane", "bridge-demo"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "FDB:" in r.stdout and "02:00:0a:f4:00:02" in r.stdout


def test_no_command_prints_help():
    r = subprocess.run([sys.executable, "-m", "dataplane"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "usage: podnet" in r.stdout
