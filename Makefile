# podnet: every target sets itself up (venv, Cython build, Debian tools) from a fresh clone.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.podnet-installed
# command:debian-package pairs the tests, demo and benchmarks use
TOOLS  := ip:iproute2 ping:iputils-ping iperf3:iperf3 tcpdump:tcpdump tshark:tshark bridge:iproute2 gcc:gcc iptables:iptables nft:nftables podman:podman runc:runc busybox:busybox-static ctr:containerd /usr/lib/cni/loopback:containernetworking-plugins

.PHONY: all setup deps build test demo bench fuzz annotate clean

all: test

deps:
	@missing=""; for pair in $(TOOLS); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

# Rebuilds only what changed; the .so files land beside the .pyx sources.
build: $(STAMP)
	$(PY) setup.py -q build_ext --inplace -j 2

setup: deps build

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(PY) -m dataplane demo

# bench/stages.py: the fast-path stages against their dpkt versions, in fresh
# processes (docs/benchmarks.md's table); `pytest bench` is pytest-benchmark's quick view
# of the same stages. End-to-end runs are interleaved rounds (bench/rounds.py).
bench: setup
	$(PY) bench/stages.py
	$(PY) bench/instructions.py >/dev/null
	$(PY) bench/scaling.py >/dev/null
	@if [ "$$(id -u)" = 0 ]; then $(PY) bench/e2e_pods.py && $(PY) bench/e2e_overlay.py >/dev/null \
	  && $(PY) bench/e2e_overlay.py --legacy --workers 1,2 --out bench/results/overlay_workers.json >/dev/null \
	  && $(PY) bench/e2e_services.py >/dev/null && $(PY) bench/e2e_connect.py >/dev/null \
	  && $(PY) bench/e2e_pause.py >/dev/null && $(PY) bench/e2e_churn.py >/dev/null \
	  && $(PY) bench/e2e_cni.py >/dev/null && $(PY) bench/e2e_toolkit.py >/dev/null; \
	  else echo "end-to-end benchmarks skipped: they need root"; fi
	$(PY) bench/tables.py --write

# Long fuzzing run of the fast path built with AddressSanitizer (build/asan):
# FUZZ_EXAMPLES scenarios, a new seed each run (FUZZ_SEED=n to repeat one);
# failures are kept in build/hypothesis, the last scenario in build/fuzz-last-scenario.txt.
FUZZ_EXAMPLES ?= 20000
fuzz: setup
	$(PY) tests/fuzz_asan.py --examples $(FUZZ_EXAMPLES) --seed $${FUZZ_SEED:-$$(date +%s)}

# HTML view of where Python leaks into the fast path (yellow lines).
annotate: $(STAMP)
	$(VENV)/bin/cython -a -3 fastpath/*.pyx

clean:
	rm -rf build *.egg-info fastpath/*.c fastpath/*.so fastpath/*.html
