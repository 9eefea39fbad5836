"""Standard options, AgentSpec, validation helpers and the man page / usage renderers."""

from __future__ import annotations

import re
from typing import Any

import pytest

from guestfence.agent.manpage import getopt_form, metadata_of, render_manpage, usage_text
from guestfence.agent.params import Param, UsageError
from guestfence.agent.standard import (
    CONNECT_TIMEOUT_CAP,
    AgentSpec,
    Options,
    agent_params,
    apply_defaults,
    normalise_action,
    validate,
)
from guestfence.errors import ConfigError

EVERY_AGENT = {"action", "help", "debug", "verbose", "verbose_level", "version",
               "power_timeout", "shell_timeout", "login_timeout", "disable_timeout",
               "power_wait", "stonith_status_sleep", "retry_on", "delay", "plug_separator",
               "quiet"}
GROUPS = {"ipaddr": {"ipaddr", "ipport"}, "login": {"login"},
          "passwd": {"passwd", "passwd_script"}, "ssl": {"ssl", "ssl_secure", "ssl_insecure"},
          "has_plug": {"port", "separator"}, "method": {"method"}}
FULL = AgentSpec("fence_full", "Full", "Long.\n\n.Starts with a dot", "https://example.org",
                 params=(Param("api_path", "API path", default="/api", metavar="path"),),
                 ipaddr=True, ipport=80, login=True, passwd=True, ssl=True, has_plug=True,
                 has_list=True, method=True, defaults={"power_wait": "1", "shell_timeout": "5"},
                 plug_desc="VM name")


def names(spec: AgentSpec) -> set[str]:
    return {p.name for p in agent_params(spec)}


def test_every_agent_gets_the_standard_options() -> None:
    assert names(AgentSpec("fence_min", "Minimal")) == EVERY_AGENT


@pytest.mark.parametrize(("group", "added"), GROUPS.items())
def test_opt_in_groups(group: str, added: set[str]) -> None:
    flags: dict[str, Any] = {group: True}
    assert names(AgentSpec("fence_g", "G", **flags)) == EVERY_AGENT | added


def test_defaults_depend_on_the_spec() -> None:
    params = {p.name: p for p in agent_params(FULL)}
    assert params["power_wait"].default == "1" and params["shell_timeout"].default == "5"
    assert params["power_timeout"].default == "20" and params["ipport"].default == "80"
    assert params["port"].shortdesc == "VM name"
    assert params["api_path"].long == "api-path"  # agent options always get a long form
    fabric = {p.name: p for p in agent_params(AgentSpec("fence_f", "F", fabric=True))}
    assert fabric["action"].default == "off"


@pytest.mark.parametrize("param", [Param("mine", "clashes with -a", short="a", long="mine"),
                                   Param("ip", "clashes with --ip"),
                                   Param("password_script", "clashes with passwd_script")])
def test_option_clashes_are_refused(param: Param) -> None:
    with pytest.raises(ValueError, match="reuses"):
        AgentSpec("fence_x", "X", params=(param,), ipaddr=True, passwd=True)


def test_defaults_for_unknown_options_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown options"):
        AgentSpec("fence_x", "X", defaults={"ipport": "22"})


@pytest.mark.parametrize(("name", "form"), [("ipaddr", "-a, --ip=[ip]"), ("ssl", "-z, --ssl"),
                                            ("ssl_insecure", "--ssl-insecure"),
                                            ("delay", "--delay=[seconds]"),
                                            ("debug", "-D, --debug-file=[debugfile]")])
def test_getopt_form(name: str, form: str) -> None:
    assert getopt_form(next(p for p in agent_params(FULL) if p.name == name)) == form


def test_metadata_order_is_order_then_name() -> None:
    meta = metadata_of(FULL)
    order = [p.name for p in meta.params]
    assert order[:4] == ["action", "ip", "ipaddr", "ipport"]
    assert order.index("username") < order.index("api_path") < order.index("quiet")
    assert order[order.index("quiet"):order.index("quiet") + 8] == [
        "quiet", "verbose", "verbose_level", "debug", "debug_file", "version", "help",
        "plug_separator"]
    assert order[-1] == "retry_on"
    by_name = {p.name: p for p in meta.params}
    assert by_name["power_wait"].default == "1"
    assert by_name["verbose"].content == "boolean" and by_name["verbose"].default is None


def test_apply_defaults_drops_false_flags() -> None:
    values = apply_defaults(FULL, {"ssl": "0", "ssl_insecure": "1", "verbose": "no"})
    assert "ssl" not in values and "verbose" not in values and values["ssl_insecure"] == "1"
    assert values["action"] == "reboot" and values["separator"] == ","


@pytest.mark.parametrize(("raw", "action"), [("OFF", "off"), ("meta-data", "metadata"),
                                             (" Status ", "status")])
def test_normalise_action(raw: str, action: str) -> None:
    assert normalise_action(FULL, raw) == action


def test_enable_disable_only_for_fabric() -> None:
    fabric = AgentSpec("fence_f", "F", fabric=True)
    assert normalise_action(fabric, "enable") == "on"
    assert normalise_action(fabric, "disable") == "off"
    with pytest.raises(UsageError, match="Unrecognised action 'enable'"):
        normalise_action(FULL, "enable")
    with pytest.raises(UsageError, match="Unrecognised action 'reboot'"):
        normalise_action(fabric, "reboot")


GIVEN = {"ipaddr": "d", "login": "u", "passwd": "p", "port": "a,b", "method": "Cycle",
         "retry_on": "007"}


def test_validate_normalises_values() -> None:
    opts = validate(FULL, GIVEN, "reboot", {})
    assert opts.plugs == ("a", "b")
    assert opts.get("method") == "cycle" and opts.number("retry_on") == 7
    assert opts.get("power_timeout") == "20"


def test_agent_validate_hook() -> None:
    def check(options: Options) -> None:
        if options.get("api_path") == "/api":
            raise ConfigError("api_path must be configured")

    spec = AgentSpec("fence_h", "H", params=FULL.params, validate=check)
    with pytest.raises(UsageError, match=r"^Failed: api_path must be configured$"):
        validate(spec, {}, "validate-all", {})
    assert validate(spec, {"api_path": "/v2"}, "status", {}).get("api_path") == "/v2"


def test_ssl_secure_and_insecure_conflict() -> None:
    with pytest.raises(UsageError, match="cannot be used together"):
        validate(FULL, {**GIVEN, "ssl_secure": "1", "ssl_insecure": "1"}, "status", {})


def test_options_helpers() -> None:
    opts = Options("status", {"login_timeout": "0"})
    assert opts.connect_timeout == CONNECT_TIMEOUT_CAP and opts.ipport is None
    assert opts.uuid_of("4C4C4544-0042-3410-8036-B4C04F4E4A31") == (
        "4c4c4544-0042-3410-8036-b4c04f4e4a31")
    assert opts.uuid_of("vm1") is None
    assert Options("status", {"passwd": "x", "passwd_script": "exit 3"}).password == "x"


def test_failing_password_script() -> None:
    with pytest.raises(ConfigError, match="exit code 3"):
        _ = Options("status", {"passwd_script": "exit 3"}).password


# --- usage and man page -----------------------------------------------------------


def test_usage_lists_every_option() -> None:
    text = usage_text(FULL)
    for p in agent_params(FULL):
        assert getopt_form(p) in text
    assert all(len(line) <= 84 for line in text.splitlines())


def roff(text: str) -> str:
    return text.replace("-", "\\-")


def test_manpage_is_roff_and_documents_everything() -> None:
    meta = metadata_of(FULL)
    page = render_manpage(meta, version="1.2")
    assert page.startswith('.TH FENCE_FULL 8 "" "guestfence 1.2" "Fence agents"\n')
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "ACTIONS",
                    "STDIN PARAMETERS", "EXIT STATUS", "SEE ALSO"):
        assert f"\n.SH {section}\n" in page
    for p in meta.params:
        assert f".B {roff(p.name)}\n" in page  # stdin name
        assert f".B {roff(p.getopt)}\n" in page  # getopt form
    for a in meta.actions:
        assert f".B {roff(a.name)}\n" in page
    assert "Default: \\fI20\\fR." in page  # power_timeout default
    assert "\n\\&.Starts with a dot\n" in page  # a line starting with "." is escaped
    assert re.search(r"\.B ipaddr\nDeprecated; same as ip\.", page)
    assert "\n.B 2\n" in page


def test_manpage_of_fabric_agent_and_of_any_metadata() -> None:
    fabric = render_manpage(metadata_of(AgentSpec("fence_f", "F", fabric=True)))
    assert "unfencing" in fabric and "\n.B reboot\n" not in fabric
    from guestfence.agents import virtparams

    xvm = render_manpage(virtparams.metadata("fence_xvm", virtparams.XVM_PARAMS))
    assert ".SH OPTIONS" in xvm and "multicast_address" in xvm
