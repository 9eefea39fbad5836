# guestfence — every target installs what it needs, idempotently, on Debian 12 (as root).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# What the demo needs: a Python to build the venv with, libvirt (its test driver is
# built into libvirt0), iproute2 and procps (sysctl) for the private network namespace.
BASE_PACKAGES := python3-venv python3-dev gcc pkg-config libvirt-dev libvirt0 iproute2 procps
# The real peers the tests run against: the C fence-virt tools, fence-agents' metadata
# schema, a real libvirtd with QEMU (TCG) for the tests that fence and migrate real guests,
# and corosync + pacemaker for the host cluster (CPG tracking) and the guest-cluster lab.
# systemd-analyze checks the unit files, man-db + groff render the man pages, bash and zsh
# check the generated completion scripts.
TEST_PACKAGES := fence-virt fence-virtd fence-agents \
	libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86 chromium tgt libiscsi7 \
	golang-go golang-github-vmware-govmomi-dev \
	corosync libcpg4 libquorum5 pacemaker pacemaker-cli-utils \
	systemd man-db groff-base zsh
BENCH_PACKAGES := hyperfine

STAMP_BASE := $(VENV)/.apt-base
STAMP_TEST := $(VENV)/.apt-test
STAMP_BENCH := $(VENV)/.apt-bench
STAMP_PIP := $(VENV)/.pip-done

# Install missing Debian packages without letting their scripts start services:
# a temporary policy-rc.d refuses every start (fence-virtd would otherwise start one).
define apt_install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		policy=/usr/sbin/policy-rc.d; own_policy=0; \
		if [ ! -e $$policy ]; then printf '#!/bin/sh\nexit 101\n' > $$policy; \
			chmod 755 $$policy; own_policy=1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; rc=$$?; \
		[ $$own_policy = 1 ] && rm -f $$policy; \
		exit $$rc; \
	fi
endef

.PHONY: all setup test-deps demo lab test lint typecheck unit integration bench man clean

all: setup

setup: $(STAMP_PIP)

$(STAMP_BASE): Makefile
	$(call apt_install,$(BASE_PACKAGES))
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	@touch $@

$(STAMP_PIP): $(STAMP_BASE) pyproject.toml
	$(BIN)/pip install -q --upgrade pip==25.3
	$(BIN)/pip install -q -e '.[dev]'
	@# An editable install is not byte-compiled (pip compiles only real installs), and
	@# agents pay ~10 ms per run to compile their modules without it.
	$(BIN)/python -m compileall -q src
	@touch $@

$(STAMP_TEST): $(STAMP_BASE) Makefile
	$(call apt_install,$(TEST_PACKAGES))
	@touch $@

$(STAMP_BENCH): $(STAMP_TEST)
	$(call apt_install,$(BENCH_PACKAGES))
	@touch $@

test-deps: setup $(STAMP_TEST)

demo: setup
	$(BIN)/guestfence demo

# a three-node pacemaker guest cluster fencing through guestfence (guestfence lab down removes it)
lab: test-deps
	$(BIN)/guestfence lab up

lint: setup
	$(BIN)/ruff check --no-cache src tests bench

typecheck: setup
	$(BIN)/mypy --strict src

unit: test-deps
	$(BIN)/pytest -q tests/unit

integration: test-deps
	$(BIN)/pytest -q tests/integration

test: test-deps lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider tests

bench: setup $(STAMP_BENCH)
	@for b in bench/*.py; do case "$$(basename $$b)" in common.py|_*) continue;; esac; \
		echo "== $$b"; $(BIN)/python $$b || exit 1; done

# man/ is generated from the option definitions (tests check it is up to date)
man: setup
	$(BIN)/guestfence manpages man

clean:
	rm -rf $(VENV) build src/*.egg-info .mypy_cache .ruff_cache .pytest_cache
