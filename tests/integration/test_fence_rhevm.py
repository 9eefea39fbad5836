"""fence_rhevm as Pacemaker runs it (a process, options on stdin) against the oVirt mock."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from guestfence.lab.ourdaemon import venv_tool
from guestfence.lab.ovirt_mock import MockUser, OvirtMock

AGENT = venv_tool("fence_rhevm")
FAST = {"power_wait": "0", "stonith_status_sleep": "0"}


class Run:
    def __init__(self, done: subprocess.CompletedProcess[str], seconds: float) -> None:
        self.code, self.out, self.err, self.seconds = (done.returncode, done.stdout,
                                                       done.stderr, seconds)

    def __repr__(self) -> str:
        return f"exit {self.code}, stdout {self.out!r}, stderr {self.err!r}"


def run(engine: OvirtMock, action: str, plug: str | None = None, *,
        env: dict[str, str] | None = None, **options: str) -> Run:
    values = {"action": action, "ip": "127.0.0.1", "ipport": str(engine.port),
              "username": "admin@internal", "password": "secret", **FAST}
    if plug is not None:
        values["plug"] = plug
    if engine.tls:
        values["ssl"] = "1"
    values.update(options)
    stdin = "".join(f"{k}={v}\n" for k, v in values.items()) + "nodename=node1\n"
    environ = {k: v for k, v in os.environ.items()
               if "proxy" not in k.lower() and k != "REQUESTS_CA_BUNDLE"}
    environ.update(env or {})
    start = time.monotonic()
    done = subprocess.run([AGENT], input=stdin, capture_output=True, text=True, timeout=60,
                          env=environ, check=False)
    return Run(done, time.monotonic() - start)


@pytest.fixture
def engine() -> Iterator[OvirtMock]:
    with OvirtMock() as mock:
        mock.add_vm("node1-vm", "up")
        mock.add_vm("node2-vm", "down")
        yield mock


# --- actions ----------------------------------------------------------------------------


def test_list_prints_names_with_empty_alias(engine: OvirtMock) -> None:
    r = run(engine, "list")
    assert r.code == 0, r
    assert r.out.splitlines() == ["node1-vm,", "node2-vm,"]


def test_list_status_prints_on_and_off(engine: OvirtMock) -> None:
    r = run(engine, "list-status")
    assert r.code == 0, r
    assert r.out.splitlines() == ["node1-vm,,ON", "node2-vm,,OFF"]


def test_monitor_lists(engine: OvirtMock) -> None:
    r = run(engine, "monitor")
    assert r.code == 0, r
    assert r.out == ""


def test_status_on_and_off(engine: OvirtMock) -> None:
    r = run(engine, "status", "node1-vm")
    assert (r.code, r.out) == (0, "Status: ON\n"), r
    r = run(engine, "status", "node2-vm")
    assert (r.code, r.out) == (2, "Status: OFF\n"), r


def test_off_is_a_verified_hard_stop(engine: OvirtMock) -> None:
    r = run(engine, "off", "node1-vm")
    assert (r.code, r.out) == (0, "Success: Powered OFF\n"), r
    assert engine.vm("node1-vm").status == "down"
    vm_id = engine.vm("node1-vm").id
    posts = engine.recorded("POST")
    assert [p.path for p in posts] == [f"/ovirt-engine/api/vms/{vm_id}/stop"]
    assert posts[0].body == "<action/>"
    # verified: polled until the engine said down (powering_down first)
    polls = engine.recorded("GET", f"/vms/{vm_id}")
    assert len(polls) >= 3
    r = run(engine, "off", "node1-vm")
    assert (r.code, r.out) == (0, "Success: Already OFF\n"), r
    assert not engine.recorded("POST", "/shutdown")


def test_on_waits_until_the_vm_is_launched(engine: OvirtMock) -> None:
    r = run(engine, "on", "node2-vm")
    assert (r.code, r.out) == (0, "Success: Powered ON\n"), r
    assert engine.vm("node2-vm").status in ("powering_up", "up")
    assert [p.path.rsplit("/", 1)[1] for p in engine.recorded("POST")] == ["start"]


def test_reboot_stops_then_starts(engine: OvirtMock) -> None:
    r = run(engine, "reboot", "node1-vm")
    assert (r.code, r.out) == (0, "Success: Rebooted\n"), r
    assert [p.path.rsplit("/", 1)[1] for p in engine.recorded("POST")] == ["stop", "start"]


def test_off_times_out_when_the_vm_does_not_go_down(engine: OvirtMock) -> None:
    engine.steps = 1000  # stays powering_down
    r = run(engine, "off", "node1-vm", power_timeout="3")
    assert r.code == 1, r
    assert "Timed out waiting to power OFF" in r.err


def test_session_is_reused_and_headers_are_sent(engine: OvirtMock) -> None:
    r = run(engine, "reboot", "node1-vm")
    assert r.code == 0, r
    assert engine.sessions_created == 1
    assert [q.auth for q in engine.requests[1:]] == ["cookie"] * (len(engine.requests) - 1)
    for q in engine.requests:
        assert q.headers["version"] == "4"
        assert q.headers["filter"] == "true"
        assert q.headers["prefer"] == "persistent-auth"
        assert q.headers["accept"] == "application/xml"


def test_use_cookies_keeps_the_session_across_runs(engine: OvirtMock, tmp_path: Path) -> None:
    jar = tmp_path / "cookies.dat"
    for _ in range(2):
        r = run(engine, "status", "node1-vm", use_cookies="1", cookie_file=str(jar))
        assert r.code == 0, r
    assert engine.sessions_created == 1
    assert jar.stat().st_mode & 0o077 == 0
    second = engine.requests[len(engine.requests) // 2:]
    assert all(q.auth == "cookie" and "authorization" not in q.headers for q in second)
    engine.sessions.clear()  # the engine forgot the session: log in again
    r = run(engine, "status", "node1-vm", use_cookies="1", cookie_file=str(jar))
    assert r.code == 0, r
    assert engine.sessions_created == 2


# --- VM lookup -----------------------------------------------------------------------


def test_name_needing_url_encoding(engine: OvirtMock) -> None:
    engine.add_vm("my vm&x", "up")
    engine.add_vm("my vm", "up")
    r = run(engine, "off", "my vm&x")
    assert (r.code, r.out) == (0, "Success: Powered OFF\n"), r
    assert engine.vm("my vm&x").status == "down"
    assert engine.vm("my vm").status == "up"
    search = engine.recorded("GET", "/vms")[0]
    assert search.query == "search=name%3D%22my%20vm%26x%22"
    assert search.params == {"search": ['name="my vm&x"']}


def test_exact_name_wins_over_prefix_and_wildcard_matches(engine: OvirtMock) -> None:
    engine.add_vm("db-old", "up")
    engine.add_vm("db", "up")
    r = run(engine, "off", "db")
    assert r.code == 0, r
    assert engine.vm("db").status == "down"
    assert engine.vm("db-old").status == "up"
    # a wildcard in the plug is searched, but only a VM named exactly so is used
    r = run(engine, "status", "db*")
    assert r.code == 1, r
    assert "Can not find VM UUID" in r.err and "db-old" in r.err


def test_unknown_vm_is_a_clear_failure(engine: OvirtMock) -> None:
    r = run(engine, "status", "nosuchvm")
    assert r.code == 1, r
    assert "Can not find VM UUID" in r.err and "'nosuchvm'" in r.err


def test_vm_id_as_plug(engine: OvirtMock) -> None:
    r = run(engine, "status", engine.vm("node2-vm").id)
    assert (r.code, r.out) == (2, "Status: OFF\n"), r


# --- API versions --------------------------------------------------------------------


def test_v3_engine_is_detected() -> None:
    with OvirtMock(versions=(3,)) as engine:
        engine.add_vm("node1-vm", "up")
        r = run(engine, "off", "node1-vm")
        assert (r.code, r.out) == (0, "Success: Powered OFF\n"), r
        versions = [q.headers["version"] for q in engine.requests]
        assert versions[0] == "4"  # the probe
        assert set(versions[1:]) == {"3"}
        r = run(engine, "list-status")
        assert r.out == "node1-vm,,OFF\n", r


def test_api_version_forced(engine: OvirtMock) -> None:
    r = run(engine, "status", "node1-vm", api_version="3")
    assert r.code == 0, r
    assert {q.headers["version"] for q in engine.requests} == {"3"}
    with OvirtMock(versions=(4,)) as v4only:
        v4only.add_vm("node1-vm", "up")
        r = run(v4only, "status", "node1-vm", api_version="3")
        assert r.code == 1, r
        assert "HTTP 400" in r.err


def test_api_path() -> None:
    with OvirtMock(api_path="/api") as engine:
        engine.add_vm("node1-vm", "up")
        r = run(engine, "status", "node1-vm", api_path="/api")
        assert r.code == 0, r
        r = run(engine, "status", "node1-vm")
        assert r.code == 1, r
        assert "HTTP 404" in r.err and "api_path" in r.err


# --- permissions -----------------------------------------------------------------------


@pytest.fixture
def userrole() -> Iterator[OvirtMock]:
    users = {"admin@internal": MockUser("secret", admin=True),
             "fence@internal": MockUser("pw", vms={"node1-vm", "node2-vm"},
                                        read_only={"node2-vm"})}
    with OvirtMock(users=users) as mock:
        for name in ("node1-vm", "node2-vm", "other-vm"):
            mock.add_vm(name, "up")
        yield mock


def test_userrole_account_works_with_the_filter(userrole: OvirtMock) -> None:
    r = run(userrole, "list", username="fence@internal", password="pw")
    assert r.out.splitlines() == ["node1-vm,", "node2-vm,"], r
    r = run(userrole, "off", "node1-vm", username="fence@internal", password="pw")
    assert (r.code, r.out) == (0, "Success: Powered OFF\n"), r
    assert {q.headers["filter"] for q in userrole.requests} == {"true"}


def test_disable_http_filter(userrole: OvirtMock) -> None:
    r = run(userrole, "list", disable_http_filter="1")
    assert r.out.splitlines() == ["node1-vm,", "node2-vm,", "other-vm,"], r
    assert {q.headers["filter"] for q in userrole.requests} == {"false"}
    r = run(userrole, "status", "node1-vm", username="fence@internal", password="pw",
            disable_http_filter="1")
    assert r.code == 1, r
    assert "HTTP 403" in r.err and "administrator" in r.err


def test_401_bad_password(engine: OvirtMock) -> None:
    r = run(engine, "status", "node1-vm", password="wrong")
    assert r.code == 1, r
    assert "HTTP 401" in r.err and "login denied for 'admin@internal'" in r.err
    assert r.out == ""


def test_403_no_permission_to_stop(userrole: OvirtMock) -> None:
    r = run(userrole, "off", "node2-vm", username="fence@internal", password="pw")
    assert r.code == 1, r
    assert "HTTP 403" in r.err and "not authorized" in r.err and "permission" in r.err
    assert userrole.vm("node2-vm").status == "up"


def test_vm_invisible_to_the_user(userrole: OvirtMock) -> None:
    r = run(userrole, "off", "other-vm", username="fence@internal", password="pw")
    assert r.code == 1, r
    assert "Can not find VM UUID" in r.err and "permissions" in r.err


def test_404_vm_vanished(engine: OvirtMock) -> None:
    engine.fail(404, match="/vms/")
    r = run(engine, "status", "node1-vm")
    assert r.code == 1, r
    assert "HTTP 404" in r.err and "not found" in r.err


@pytest.mark.parametrize("status", [500, 503])
def test_5xx_engine_failure(engine: OvirtMock, status: int) -> None:
    engine.fail(status, match="/stop")
    r = run(engine, "off", "node1-vm")
    assert r.code == 1, r
    assert f"HTTP {status}" in r.err and "Injected failure" in r.err
    assert "the engine failed" in r.err


def test_409_when_already_in_state_is_tolerated(engine: OvirtMock) -> None:
    # a start refused because the VM is running (started meanwhile) is not a failure
    engine.vm("node2-vm").status = "up"
    r = run(engine, "reboot", "node2-vm")
    assert r.code == 0, r


# --- TLS and timing ----------------------------------------------------------------------


def test_tls_verification() -> None:
    with OvirtMock(tls=True) as engine:
        engine.add_vm("node1-vm", "up")
        r = run(engine, "status", "node1-vm")
        assert r.code == 1, r
        assert "TLS" in r.err and "ssl_insecure" in r.err
        assert not engine.requests
        r = run(engine, "status", "node1-vm", ssl_insecure="1")
        assert (r.code, r.out) == (0, "Status: ON\n"), r
        assert "Warning" not in r.err
        assert engine.cert_path is not None
        r = run(engine, "status", "node1-vm", env={"REQUESTS_CA_BUNDLE": str(engine.cert_path)})
        assert (r.code, r.out) == (0, "Status: ON\n"), r


def test_ssl_insecure_zero_does_not_disable_verification() -> None:
    with OvirtMock(tls=True) as engine:
        engine.add_vm("node1-vm", "up")
        r = run(engine, "status", "node1-vm", ssl_insecure="0")
        assert r.code == 1, r


def test_engine_stopped_mid_action_fails_quickly() -> None:
    engine = OvirtMock(steps=1000).start()
    try:
        engine.add_vm("node1-vm", "up")

        def stop_after_stop_request() -> None:
            deadline = time.monotonic() + 20
            while not engine.recorded("POST", "/stop") and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            engine.stop()

        killer = threading.Thread(target=stop_after_stop_request)
        killer.start()
        r = run(engine, "off", "node1-vm", stonith_status_sleep="1")
        killer.join()
    finally:
        engine.stop()
    assert r.code == 1, r
    assert "Unable to connect" in r.err or "Connection" in r.err
    assert r.seconds < 15


def test_hanging_engine_is_bounded_by_shell_timeout(engine: OvirtMock) -> None:
    engine.hang_match = "/vms"
    r = run(engine, "status", "node1-vm", shell_timeout="2")
    assert r.code == 1, r
    assert "timed out" in r.err
    assert r.seconds < 10


def test_unreachable_engine(tmp_path: Path) -> None:
    engine = OvirtMock().start()
    engine.stop()  # the port is closed now
    r = run(engine, "status", "node1-vm")
    assert r.code == 1, r
    assert "Unable to connect" in r.err


def test_name_the_search_cannot_quote_is_found_in_the_full_list(engine: OvirtMock) -> None:
    engine.add_vm('say "hi"', "up")
    r = run(engine, "status", 'say "hi"')
    assert (r.code, r.out) == (0, "Status: ON\n"), r
    assert not any(q.query for q in engine.recorded("GET", "/vms"))


@pytest.mark.parametrize("status", ["unknown", "not_responding"])
def test_status_the_engine_does_not_know_is_a_failure(engine: OvirtMock, status: str) -> None:
    """Review finding: "unknown" was reported ON ("Already ON" / "Status: ON")."""
    engine.add_vm("lost-vm", status)
    for action in ("status", "on", "off"):
        r = run(engine, action, "lost-vm")
        assert r.code == 1 and r.out == "", r


def test_comma_in_a_vm_name_is_one_plug(engine: OvirtMock) -> None:
    """Review finding: "db,prod" was split into the VMs "db" and "prod"."""
    engine.add_vm("db,prod", "up")
    engine.add_vm("db", "down")
    engine.add_vm("prod", "down")
    r = run(engine, "status", "db,prod")
    assert (r.code, r.out) == (0, "Status: ON\n"), r
    r = run(engine, "off", "db,prod")
    assert (r.code, r.out) == (0, "Success: Powered OFF\n"), r
    assert engine.vm("db,prod").status == "down"
