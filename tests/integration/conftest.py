"""Fixtures for integration tests: namespaces, LANs, keys and the real C fence_virtd.

Every fixture that creates something removes it in a ``finally`` so a failing
test cannot leak namespaces or daemons.  Namespace names carry the pytest
process id (``gft-<pid>-<n>-...``); at session start, namespaces left behind
by crashed earlier runs are removed (those of other live runs are kept).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from guestfence.lab.cfence import CConfig, CDaemon, missing_tools, write_key
from guestfence.lab.hostslab import HostsLab
from guestfence.lab.libvirtd import missing_tools as libvirtd_missing_tools
from guestfence.lab.netns import (
    TEST_PREFIX,
    LabError,
    Lan,
    Namespace,
    build_lan,
    list_namespaces,
    remove_stale_namespaces,
    run_prefix,
)

OWN_PREFIX = f"{TEST_PREFIX}{os.getpid()}-"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's report on the item so fixtures can tell a failed test."""
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def _failed(request: pytest.FixtureRequest) -> bool:
    rep = getattr(request.node, "rep_call", None)
    return rep is None or rep.failed


def own_namespaces() -> list[str]:
    """Namespaces created by this pytest process."""
    return [n for n in list_namespaces() if n.startswith(OWN_PREFIX)]


@pytest.fixture(scope="session", autouse=True)
def lab_host() -> Iterator[None]:
    """Fail (not skip) when the machine cannot run the lab; clean stale namespaces."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("root privileges (network namespaces need CAP_SYS_ADMIN)")
    problems += missing_tools()
    if problems:
        pytest.fail("integration tests need: " + "; ".join(problems), pytrace=False)
    remove_stale_namespaces(include_own=True)
    yield
    leaked = own_namespaces()
    for name in leaked:
        Namespace(name).destroy()
    if leaked:
        raise LabError(f"namespaces leaked by the tests (now removed): {leaked}")


@pytest.fixture
def netns() -> Iterator[Namespace]:
    """A fresh namespace with IPv4/IPv6 multicast on ``lo``; destroyed afterwards."""
    ns = Namespace.create(run_prefix() + "ns")
    try:
        yield ns
    finally:
        ns.destroy()


LanFactory = Callable[..., Lan]


@pytest.fixture
def lan() -> Iterator[LanFactory]:
    """Factory ``lan(hosts, **build_lan_kwargs) -> Lan``; every LAN is destroyed afterwards."""
    made: list[Lan] = []

    def make(hosts: Sequence[str], **kwargs: Any) -> Lan:
        net = build_lan(run_prefix(), hosts, **kwargs)
        made.append(net)
        return net

    try:
        yield make
    finally:
        errors: list[str] = []
        for net in reversed(made):
            try:
                net.destroy()
            except LabError as exc:
                errors.append(str(exc))
        if errors:
            raise LabError("; ".join(errors))


@pytest.fixture
def tmp_key(tmp_path: Path) -> Path:
    """A fresh 4096-byte shared key file (mode 0600)."""
    return write_key(tmp_path / "fence_xvm.key")


@pytest.fixture
def hosts_lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[HostsLab]:
    """Two started hosts (h1, h2: private libvirtd + QEMU each, on one LAN), no daemons yet.

    Fails naming what is missing; stopped afterwards, with every log printed
    when the test (or a fixture building on this one) failed.
    """
    missing = libvirtd_missing_tools()
    if missing:
        pytest.fail("the two-host tests need: " + "; ".join(missing), pytrace=False)
    lab = HostsLab(tmp_path / "lab")
    try:
        lab.start()
        yield lab
    finally:
        if _failed(request):
            print(lab.logs())
        lab.stop()


DaemonFactory = Callable[..., CDaemon]


@pytest.fixture
def c_daemon(request: pytest.FixtureRequest) -> Iterator[DaemonFactory]:
    """Factory ``c_daemon(config, ns=None, **CDaemon_kwargs) -> CDaemon`` (started, ready).

    All daemons are stopped afterwards; when the test failed their log tails
    are printed (pytest shows them with the failure).
    """
    started: list[CDaemon] = []

    def start(config: CConfig, ns: Namespace | None = None, **kwargs: Any) -> CDaemon:
        daemon = CDaemon(config, ns, **kwargs)
        started.append(daemon)
        daemon.start()
        return daemon

    try:
        yield start
    finally:
        for daemon in reversed(started):
            daemon.stop()
        if _failed(request):
            for daemon in started:
                print(f"--- {daemon!r} log {daemon.log_path}:\n{daemon.log_tail()}")
