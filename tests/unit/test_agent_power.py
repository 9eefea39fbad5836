"""The generic power driver (guestfence.agent.power): input, actions, state machine, exit codes.

A fake device with scripted state changes and a fake clock whose sleep() only
records and advances time: nothing here really sleeps.
"""

from __future__ import annotations

import io
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from guestfence.agent.params import Param
from guestfence.agent.power import run_agent
from guestfence.agent.standard import AgentSpec, Options
from guestfence.errors import TransportError

RNG = Path("/usr/share/cluster/relaxng/metadata.rng")

# A power agent with every option group, and a fabric agent.
FULL = AgentSpec(
    "fence_sample", "Sample agent", "Sample long description.", "https://example.org",
    params=(Param("api_path", "The path part of the API URL", long="api-path",
                  default="/api", metavar="path"),),
    symlinks=(("fence_sample_alias", "Same agent, other name"),),
    ipaddr=True, ipport=80, login=True, passwd=True, ssl=True, has_plug=True,
    has_list=True, method=True,
)
SINGLE = AgentSpec("fence_single", "Single-plug agent", ipaddr=True)
FABRIC = AgentSpec("fence_fabric", "Fabric agent", fabric=True, force_on=True, has_plug=True)
CREDS = ["-a", "dev", "-l", "admin", "-p", "secret"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FakeDevice:
    """Plugs with a power state. set_power takes effect after ``lag`` status polls;
    states in ``never`` are never reached; ``script`` forces the next statuses."""

    def __init__(self, clock: Clock, states: dict[str, str] | None = None, *, lag: int = 0,
                 never: Sequence[str] = (), script: Sequence[str] = (),
                 fail_on: Exception | None = None) -> None:
        self.clock = clock
        self.power = dict(states or {"vm1": "on"})
        self.lag, self.never, self.script = lag, set(never), list(script)
        self.fail_on = fail_on
        self.pending: dict[str, list[Any]] = {}
        self.calls: list[tuple[str, ...]] = []
        self.closed = False
        self.listing = {p: f"alias-{p}" for p in self.power}

    def status(self, plug: str) -> str:
        self.calls.append(("status", plug))
        if self.script:
            return self.script.pop(0)
        pending = self.pending.get(plug)
        if pending is not None:
            if pending[1] <= 0:
                self.power[plug] = pending[0]
                del self.pending[plug]
            else:
                pending[1] -= 1
        return self.power.get(plug, "no such plug")

    def set_power(self, plug: str, state: str) -> None:
        self.calls.append(("set", plug, state))
        if self.fail_on is not None and state == "on":
            raise self.fail_on
        if state not in self.never:
            self.pending[plug] = [state, self.lag]

    def list(self) -> dict[str, str]:
        self.calls.append(("list",))
        return self.listing

    def close(self) -> None:
        self.closed = True

    def sets(self) -> Sequence[tuple[str, ...]]:
        return [c for c in self.calls if c[0] == "set"]


class Run:
    """One run_agent call and what it produced."""

    def __init__(self, spec: AgentSpec, argv: Sequence[str] = (), stdin: str | None = None,
                 device: FakeDevice | None = None, clock: Clock | None = None,
                 environ: dict[str, str] | None = None, **device_kw: Any) -> None:
        self.clock = clock or Clock()
        self.device = device or FakeDevice(self.clock, **device_kw)
        self.options: Options | None = None
        self.made_at: float | None = None
        out, err = io.StringIO(), io.StringIO()

        def make(options: Options) -> FakeDevice:
            self.options, self.made_at = options, self.clock.now
            return self.device

        self.code = run_agent(spec, make, list(argv), io.StringIO(stdin or ""),
                              clock=self.clock, sleep=self.clock.sleep,
                              environ=environ or {}, stdout=out, stderr=err)
        self.out, self.err = out.getvalue(), err.getvalue()


def full(*argv: str, **kw: Any) -> Run:
    return Run(FULL, [*CREDS, *argv], **kw)


# --- status -----------------------------------------------------------------------


@pytest.mark.parametrize(("state", "line", "code"), [("on", "Status: ON", 0),
                                                     ("off", "Status: OFF", 2),
                                                     ("ON", "Status: ON", 0)])
def test_status(state: str, line: str, code: int) -> None:
    run = full("-o", "status", "-n", "vm1", states={"vm1": state})
    assert (run.out, run.code) == (line + "\n", code)
    assert run.device.sets() == [] and run.device.closed


def test_status_unknown_is_exit_1() -> None:
    run = full("-o", "status", "-n", "vm1", states={"vm1": "suspended"})
    assert run.code == 1 and run.out == ""
    assert "ERROR: Failed: Unable to obtain correct plug status" in run.err


def test_status_of_several_plugs_is_on_if_any_is_on() -> None:
    run = full("-o", "status", "-n", "a,b", states={"a": "off", "b": "on"})
    assert (run.out, run.code) == ("Status: ON\n", 0)
    assert run.device.calls == [("status", "a"), ("status", "b")]


# --- off / on ---------------------------------------------------------------------


def test_off_is_verified_by_polling() -> None:
    run = full("-o", "off", "-n", "vm1", lag=2)
    assert (run.out, run.code) == ("Success: Powered OFF\n", 0)
    assert run.device.calls == [("status", "vm1"), ("set", "vm1", "off"), ("status", "vm1"),
                                ("status", "vm1"), ("status", "vm1")]
    assert run.clock.sleeps == [1, 1]  # stonith_status_sleep between polls


def test_power_wait_and_status_sleep_honoured() -> None:
    run = full("-o", "off", "-n", "vm1", "--power-wait=3", "--stonith-status-sleep=2", lag=2)
    assert run.code == 0
    assert run.clock.sleeps == [3, 2, 2]


def test_off_timeout_counts_polls() -> None:
    run = full("-o", "off", "-n", "vm1", "--power-timeout=5", never=["off"])
    assert run.code == 1 and run.out == ""
    assert "ERROR: Failed: Timed out waiting to power OFF" in run.err
    assert run.device.calls.count(("status", "vm1")) == 1 + 5
    assert run.clock.sleeps == [1] * 4
    assert run.device.closed


@pytest.mark.parametrize(("action", "state"), [("off", "OFF"), ("on", "ON")])
def test_already_in_state(action: str, state: str) -> None:
    run = full("-o", action, "-n", "vm1", states={"vm1": action})
    assert (run.out, run.code) == (f"Success: Already {state}\n", 0)
    assert run.device.sets() == []


def test_on() -> None:
    run = full("-o", "on", "-n", "vm1", states={"vm1": "off"}, lag=1)
    assert (run.out, run.code) == ("Success: Powered ON\n", 0)
    assert run.device.sets() == [("set", "vm1", "on")]


def test_on_attempts_are_1_plus_retry_on() -> None:
    run = full("-o", "on", "-n", "vm1", "--retry-on=3", "--power-timeout=2",
               states={"vm1": "off"}, never=["on"])
    assert run.code == 1
    assert "Failed: Timed out waiting to power ON" in run.err
    assert run.device.sets() == [("set", "vm1", "on")] * 4


def test_on_retries_after_device_error() -> None:
    run = full("-o", "on", "-n", "vm1", states={"vm1": "off"},
               fail_on=TransportError("connection reset"))
    assert run.code == 1 and len(run.device.sets()) == 2
    assert "ERROR: Failed: connection reset" in run.err


def test_force_on_reruns_on() -> None:
    run = Run(FABRIC, ["-o", "on", "-n", "vm1"])
    assert (run.out, run.code) == ("Success: Powered ON\n", 0)
    assert run.device.sets() == [("set", "vm1", "on")]


def test_several_plugs_are_all_switched_and_all_verified() -> None:
    run = full("-o", "off", "-n", "a, b", states={"a": "on", "b": "on"}, lag=1)
    assert run.code == 0
    assert run.device.sets() == [("set", "a", "off"), ("set", "b", "off")]
    assert run.device.power == {"a": "off", "b": "off"}


def test_several_plugs_on_is_not_already_on_while_one_is_off() -> None:
    run = full("-o", "on", "-n", "a;b", "--plug-separator=;", states={"a": "on", "b": "off"})
    assert (run.out, run.code) == ("Success: Powered ON\n", 0)
    assert run.options is not None and run.options.plugs == ("a", "b")


# --- reboot -----------------------------------------------------------------------


def test_reboot_is_off_verified_then_on() -> None:
    run = full("-o", "reboot", "-n", "vm1", lag=1)
    assert (run.out, run.code) == ("Success: Rebooted\n", 0)
    assert run.device.calls == [
        ("status", "vm1"), ("set", "vm1", "off"), ("status", "vm1"), ("status", "vm1"),
        ("set", "vm1", "on"), ("status", "vm1"), ("status", "vm1")]


def test_reboot_of_an_off_plug_only_powers_on() -> None:
    run = full("-n", "vm1", states={"vm1": "off"})  # reboot is the default action
    assert (run.out, run.code) == ("Success: Rebooted\n", 0)
    assert run.device.sets() == [("set", "vm1", "on")]


def test_force_off_reboot_powers_off_even_when_status_says_off() -> None:
    spec = AgentSpec("fence_forced", "Force-off agent", has_plug=True, force_off=True)
    run = Run(spec, ["-o", "reboot", "-n", "vm1"], states={"vm1": "off"})
    assert (run.out, run.code) == ("Success: Rebooted\n", 0)
    assert run.device.sets() == [("set", "vm1", "off"), ("set", "vm1", "on")]


@pytest.mark.parametrize("action", ["off", "reboot"])
def test_never_off_fails_and_never_powers_on(action: str) -> None:
    run = full("-o", action, "-n", "vm1", never=["off"])
    assert run.code == 1 and run.out == ""
    assert "Timed out waiting to power OFF" in run.err
    assert ("set", "vm1", "on") not in run.device.calls


def test_reboot_succeeds_when_on_times_out() -> None:
    run = full("-o", "reboot", "-n", "vm1", "--power-timeout=3", never=["on"])
    assert (run.out, run.code) == ("Success: Rebooted\n", 0)
    assert "ERROR: Timed out waiting to power ON" in run.err
    assert run.device.sets() == [("set", "vm1", "off"), ("set", "vm1", "on")]


def test_reboot_succeeds_when_on_raises() -> None:
    run = full("-o", "reboot", "-n", "vm1", fail_on=TransportError("VM locked"))
    assert (run.out, run.code) == ("Success: Rebooted\n", 0)
    assert "WARNING: VM locked" in run.err


def test_reboot_cycle_method() -> None:
    class Cycling(FakeDevice):
        def reboot_cycle(self, plug: str) -> None:
            self.calls.append(("cycle", plug))

    clock = Clock()
    run = full("-n", "a,b", "-m", "CYCLE", clock=clock, device=Cycling(clock, {"a": "on",
                                                                              "b": "on"}))
    assert (run.out, run.code) == ("Success: Rebooted\n", 0)
    assert [c for c in run.device.calls if c[0] == "cycle"] == [("cycle", "a"), ("cycle", "b")]
    assert run.device.sets() == []


# --- delay and timeouts -------------------------------------------------------------


@pytest.mark.parametrize("action", ["off", "reboot"])
def test_delay_before_first_device_contact(action: str) -> None:
    run = full("-o", action, "-n", "vm1", "--delay=10")
    assert run.code == 0
    assert run.clock.sleeps[0] == 10
    assert run.made_at == 1010.0  # the device was created after the delay


@pytest.mark.parametrize("action", ["on", "status", "list", "list-status", "monitor"])
def test_no_delay_for_other_actions(action: str) -> None:
    run = full("-o", action, "-n", "vm1", "--delay=10", states={"vm1": "off"})
    assert run.code in (0, 2)
    assert 10 not in run.clock.sleeps


def test_delay_applies_even_if_device_fails() -> None:
    clock = Clock()

    def broken(options: Options) -> FakeDevice:
        raise TransportError(f"cannot connect at {clock.now}")

    err = io.StringIO()
    code = run_agent(FULL, broken, [], io.StringIO("action=off\nip=x\nlogin=u\npasswd=p\n"
                                                   "port=1\ndelay=10\ndevices=/dev/sdx\n"),
                     clock=clock, sleep=clock.sleep, environ={}, stdout=io.StringIO(),
                     stderr=err)
    assert code == 1 and clock.sleeps == [10]
    assert "cannot connect at 1010.0" in err.getvalue()


def test_pacemaker_disables_timeouts() -> None:
    run = full("-o", "off", "-n", "vm1", "--power-timeout=3", lag=30,
               environ={"PCMK_service": "pacemaker-fenced"})
    assert run.code == 0  # polls without limit
    assert run.options is not None
    assert run.options.get("power_timeout") == run.options.get("shell_timeout") == "0"
    assert run.options.connect_timeout > 0  # connecting never waits forever


def test_disable_timeout_false_overrides_pacemaker() -> None:
    run = full("-o", "off", "-n", "vm1", "--disable-timeout=false", "--power-timeout=3",
               lag=30, environ={"PCMK_service": "pacemaker-fenced"})
    assert run.code == 1


# --- list, list-status, monitor -----------------------------------------------------


def test_list_and_list_status() -> None:
    run = full("-o", "list", states={"vm1": "on", "vm2": "off"})
    assert (run.out, run.code) == ("vm1,alias-vm1\nvm2,alias-vm2\n", 0)
    run = full("-o", "list-status", "-C", ";", states={"vm1": "on", "vm2": "off", "x": "?"})
    assert run.out == "vm1;alias-vm1;ON\nvm2;alias-vm2;OFF\nx;alias-x;UNKNOWN\n"


def test_list_never_prints_invalid_or_variable() -> None:
    clock = Clock()
    device = FakeDevice(clock)
    device.listing = {"vm1": "Invalid name", "variable-vm": "x", "vm\n2": ""}
    run = full("-o", "list", clock=clock, device=device)
    assert (run.out, run.code) == ("vm1,\nvm 2,\n", 0)
    assert "Skipping plug 'variable-vm'" in run.err


def test_list_status_from_device() -> None:
    class Listing(FakeDevice):
        def list_status(self) -> dict[str, tuple[str, str]]:
            return {"a": ("A", "poweredOn"), "b": ("", "off")}

    clock = Clock()
    run = full("-o", "list-status", clock=clock, device=Listing(clock))
    assert run.out == "a,A,UNKNOWN\nb,,OFF\n"
    assert run.device.calls == []


def test_monitor_lists_on_multi_plug_agents() -> None:
    run = full("-o", "monitor")
    assert (run.out, run.code) == ("", 0)
    assert run.device.calls == [("list",)]


def test_monitor_prefers_the_device_monitor() -> None:
    class Monitored(FakeDevice):
        def monitor(self) -> None:
            self.calls.append(("monitor",))

    clock = Clock()
    run = full("-o", "monitor", clock=clock, device=Monitored(clock))
    assert run.code == 0 and run.device.calls == [("monitor",)]


@pytest.mark.parametrize(("state", "code"), [("on", 0), ("off", 0), ("??", 1)])
def test_single_plug_monitor_and_status(state: str, code: int) -> None:
    """A reachable device is healthy even when off; an unreadable state is not."""
    run = Run(SINGLE, ["-a", "bmc", "-o", "monitor"], states={"": state})
    assert run.code == code and run.device.calls == [("status", "")]


def test_single_plug_agent_offers_no_list() -> None:
    run = Run(SINGLE, ["-a", "bmc", "-o", "list"])
    assert run.code == 1 and "Unrecognised action 'list'" in run.err


# --- input --------------------------------------------------------------------------


class Unreadable(io.StringIO):
    def __iter__(self) -> Any:
        raise AssertionError("stdin must not be read when there are arguments")


def test_argv_wins_and_stdin_is_not_read() -> None:
    clock = Clock()
    device = FakeDevice(clock)
    code = run_agent(FULL, lambda o: device, [*CREDS, "-o", "status", "-n", "vm1"],
                     Unreadable(), clock=clock, sleep=clock.sleep, environ={},
                     stdout=io.StringIO(), stderr=io.StringIO())
    assert code == 0


def test_stdin_names_aliases_quotes_and_last_wins() -> None:
    stdin = ("action=Status\nip=first\nipaddr=\"dev\"\nusername=admin\npassword=pw=x\n"
             "plug=vm0\nport=vm1\nnodename=n1\n# comment\n\nssl_insecure=0\n"
             "power-timeout=7\nDEBUG_FILE=/dev/null\nfoo=bar\n")
    run = Run(FULL, stdin=stdin)
    assert (run.out, run.code) == ("Status: ON\n", 0)
    assert run.options is not None
    opts = run.options
    assert (opts.ipaddr, opts.login, opts.password, opts.plugs) == ("dev", "admin", "pw=x",
                                                                   ("vm1",))
    assert opts.get("power_timeout") == "7" and opts.get("debug") == "/dev/null"
    assert "ssl_insecure" not in opts and not opts.ssl
    assert "Parse error: Ignoring unknown option 'foo=bar'" in run.err
    assert "nodename" not in run.err


def test_stdin_unusable_values_are_ignored_with_warning() -> None:
    run = Run(FULL, stdin="action=status\nip=d\nlogin=u\npasswd=p\nplug=vm1\nssl=maybe\n"
                          "debug_file=\n")
    assert run.code == 0 and run.options is not None and not run.options.ssl
    assert "Ignoring option 'ssl' because it does not have value 1/yes/on/true" in run.err
    assert "Ignoring option 'debug' because it has no value" in run.err
    assert "debug" not in run.options


def test_stdin_empty_required_value_then_fails_validation() -> None:
    run = Run(FULL, stdin="action=status\nip=\nlogin=u\npasswd=p\nplug=vm1\n")
    assert run.code == 1 and "Failed: You have to enter fence address" in run.err


def test_ssl_changes_default_port() -> None:
    run = full("-o", "status", "-n", "vm1", "--ssl-insecure")
    assert run.options is not None
    assert (run.options.ipport, run.options.ssl, run.options.ssl_verify) == (443, True, False)
    run = full("-o", "status", "-n", "vm1", "-z", "-u", "8443")
    assert run.options is not None and run.options.ipport == 8443
    run = full("-o", "status", "-n", "vm1")
    assert run.options is not None and run.options.ipport == 80


def test_password_script() -> None:
    run = Run(FULL, ["-a", "d", "-l", "u", "-S", "echo 's3cret'  ", "-o", "status", "-n", "vm1"])
    assert run.code == 0 and run.options is not None and run.options.password == "s3cret"


@pytest.mark.parametrize(("argv", "message"), [
    (["-l", "u", "-p", "p", "-n", "1"], "Failed: You have to enter fence address"),
    (["-a", "d", "-p", "p", "-n", "1"], "Failed: You have to set login name"),
    (["-a", "d", "-l", "u", "-n", "1"], "Failed: You have to enter password or password script"),
    ([*CREDS, "-o", "off"], "Failed: You have to enter plug number or machine identification"),
    ([*CREDS, "-n", "1", "--power-wait=x"], "--power-wait is not a valid time in seconds"),
    ([*CREDS, "-n", "1", "--retry-on=-1"], "--retry-on is not a valid non-negative integer"),
    ([*CREDS, "-n", "1", "-m", "fast"], "valid choice for --method"),
    ([*CREDS, "-n", "1", "-u", "65536"], "--ipport is not a valid port"),
    ([*CREDS, "-n", "1", "-o", "explode"], "Failed: Unrecognised action 'explode'"),
    ([*CREDS, "-n", "1", "--disable-timeout=perhaps"], "--disable-timeout is not true or false"),
    ([*CREDS, "-n", "1", "--bogus"], "Parse error: unknown option '--bogus'"),
])
def test_validation_failures(argv: list[str], message: str) -> None:
    run = Run(FULL, argv)
    assert run.code == 1 and run.out == ""
    assert message in run.err
    assert "ERROR: Please use '-h' for usage" in run.err
    assert run.options is None  # the device was never created


@pytest.mark.parametrize("action", ["list", "list-status", "monitor", "validate-all"])
def test_plug_not_needed(action: str) -> None:
    assert Run(FULL, [*CREDS, "-o", action]).code == 0


def test_validate_all_never_creates_the_device() -> None:
    def forbidden(options: Options) -> FakeDevice:
        raise AssertionError("validate-all contacted the device")

    code = run_agent(FULL, forbidden, [], io.StringIO("action=validate-all\nip=d\nlogin=u\n"
                                                      "passwd=p\nplug=1\n"),
                     environ={}, stdout=io.StringIO(), stderr=io.StringIO())
    assert code == 0


def test_action_is_case_insensitive() -> None:
    run = full("-o", "OFF", "-n", "vm1")
    assert (run.out, run.code) == ("Success: Powered OFF\n", 0)


def test_help_and_version() -> None:
    run = Run(FULL, ["-h"])
    assert run.code == 0 and "--stonith-status-sleep" in run.out
    run = Run(FULL, ["--version"])
    assert run.code == 0 and run.out.startswith("fence_sample ")


# --- metadata -----------------------------------------------------------------------


def _metadata(spec: AgentSpec, stdin: str = "action=metadata\n") -> etree._Element:
    run = Run(spec, stdin=stdin)
    assert run.code == 0 and run.err == ""
    return etree.fromstring(run.out.encode())


@pytest.mark.parametrize("spec", [FULL, SINGLE, FABRIC])
def test_metadata_validates_against_fence_agents_schema(spec: AgentSpec) -> None:
    assert RNG.exists(), f"{RNG} is missing: apt-get install fence-agents (make test-deps)"
    schema = etree.RelaxNG(etree.parse(str(RNG)))
    assert schema.validate(_metadata(spec)), schema.error_log


def test_metadata_content() -> None:
    root = _metadata(FULL)
    assert [e.tag for e in root] == ["symlink", "longdesc", "vendor-url", "parameters",
                                     "actions"]
    params = {p.get("name"): p for p in root.iter("parameter")}
    for old, new in [("ipaddr", "ip"), ("login", "username"), ("passwd", "password"),
                     ("passwd_script", "password_script"), ("port", "plug"),
                     ("debug", "debug_file")]:
        assert params[old].get("deprecated") == "1" and params[old].get("obsoletes") is None
        assert params[new].get("obsoletes") == old and params[new].get("deprecated") is None
    assert params["plug"].get("required") == "1"
    assert params["action"].find("content").get("default") == "reboot"
    assert params["power_timeout"].find("content").attrib == {"type": "second", "default": "20"}
    assert [o.get("value") for o in params["method"].iter("option")] == ["onoff", "cycle"]
    assert params["ssl_insecure"].find("getopt").get("mixed") == "--ssl-insecure"
    assert params["api_path"].find("getopt").get("mixed") == "--api-path=[path]"
    assert root.find("parameters/parameter").get("name") == "action"
    actions = [a.get("name") for a in root.iter("action")]
    assert actions == ["on", "off", "reboot", "status", "list", "list-status", "monitor",
                       "metadata", "manpage", "validate-all"]
    assert root.find("actions/action").attrib == {"name": "on", "automatic": "0"}


def test_metadata_aliases_give_the_same_xml() -> None:
    xml = Run(FULL, ["-o", "metadata"]).out
    assert Run(FULL, ["-o", "meta-data"]).out == xml
    assert Run(FULL, stdin="action=manpage\n").out == xml


def test_fabric_agent() -> None:
    root = _metadata(FABRIC)
    assert [a.get("name") for a in root.iter("action")] == [
        "on", "off", "status", "monitor", "metadata", "manpage", "validate-all"]
    assert root.find("actions/action").attrib == {"name": "on", "on_target": "1",
                                                  "automatic": "1"}
    default = root.find("parameters/parameter[@name='action']/content").get("default")
    assert default == "off"
    assert Run(FABRIC, ["-o", "reboot", "-n", "1"]).code == 1
    run = Run(FABRIC, ["-n", "vm1"])  # default action: off
    assert run.out == "Success: Powered OFF\n"
    run = Run(FABRIC, ["-o", "disable", "-n", "vm1"])
    assert run.out == "Success: Powered OFF\n"
    run = Run(FABRIC, ["-o", "Enable", "-n", "vm1"])
    assert run.out == "Success: Powered ON\n"


# --- logging, errors, signals -------------------------------------------------------


def test_log_format_quiet_verbose_and_debug_file(tmp_path: Path) -> None:
    run = full("-o", "off", "-n", "vm1", "-v", lag=1)
    assert " DEBUG: poll 1: waiting for off" in run.err
    run = full("-o", "off", "-n", "vm1", "-q", "--power-timeout=1", never=["off"])
    assert run.code == 1 and run.err == ""
    log_file = tmp_path / "debug.log"
    run = full("-o", "off", "-n", "vm1", "-D", str(log_file), lag=1)
    assert "DEBUG" not in run.err
    assert " DEBUG: poll 1" in log_file.read_text()


def test_device_error_is_exit_1_and_closes() -> None:
    clock = Clock()

    class Broken(FakeDevice):
        def status(self, plug: str) -> str:
            raise TransportError("Connection timed out")

    run = full("-o", "status", "-n", "vm1", clock=clock, device=Broken(clock))
    assert run.code == 1 and "ERROR: Failed: Connection timed out" in run.err
    assert run.device.closed


def test_unexpected_exception_is_exit_1() -> None:
    clock = Clock()

    class Buggy(FakeDevice):
        def status(self, plug: str) -> str:
            raise KeyError("oops")

    run = full("-o", "status", "-n", "vm1", clock=clock, device=Buggy(clock))
    assert run.code == 1 and "Failed: unexpected KeyError" in run.err and run.device.closed


def test_sigterm_fails_cleanly_and_closes_the_device() -> None:
    clock = Clock()

    class Killed(FakeDevice):
        def set_power(self, plug: str, state: str) -> None:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    run = full("-o", "off", "-n", "vm1", clock=clock, device=Killed(clock))
    assert run.code == 1 and run.out == ""
    assert "SIGTERM" in run.err and run.device.closed
    assert signal.getsignal(signal.SIGTERM) == before


def test_stdin_verbose_and_legacy_option_name() -> None:
    run = Run(FULL, stdin="option=off\nip=d\nlogin=u\npasswd=p\nplug=vm1\nverbose=1\n")
    assert (run.out, run.code) == ("Success: Powered OFF\n", 0)
    assert " DEBUG: " in run.err
