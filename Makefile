# guestfence — every target installs what it needs, idempotently, on Debian 12 (as root).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := python3-venv python3-dev gcc pkg-config libvirt-dev libvirt0 libvirt-clients \
	fence-virt fence-virtd fence-agents iproute2 libxml2-utils hyperfine \
	libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86
STAMP_APT := $(VENV)/.apt-done
STAMP_PIP := $(VENV)/.pip-done

.PHONY: all setup demo test lint typecheck unit integration bench clean

all: setup

setup: $(STAMP_PIP)

$(STAMP_APT):
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@[ -d $(VENV) ] || $(PYTHON) -m venv $(VENV)
	@touch $@

$(STAMP_PIP): $(STAMP_APT) pyproject.toml
	$(BIN)/pip install -q --upgrade pip==25.3
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

demo: setup
	$(BIN)/guestfence demo

lint: setup
	$(BIN)/ruff check src tests bench

typecheck: setup
	$(BIN)/mypy --strict src

unit: setup
	$(BIN)/pytest -q tests/unit

integration: setup
	$(BIN)/pytest -q tests/integration

test: lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider tests

bench: setup
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build src/*.egg-info .mypy_cache .ruff_cache .pytest_cache
