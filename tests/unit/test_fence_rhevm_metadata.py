"""fence_rhevm's metadata: valid against fence-agents' schema, with fence-agents' parameters."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from lxml import etree

from guestfence.agent.power import run_agent
from guestfence.agents import rhevm

RNG = Path("/usr/share/cluster/relaxng/metadata.rng")


def metadata(stdin: str | None = None) -> etree._Element:
    out = io.StringIO()
    if stdin is None:
        code = run_agent(rhevm.SPEC, rhevm.make_device, ["-o", "metadata"], stdout=out)
    else:
        code = run_agent(rhevm.SPEC, rhevm.make_device, [], stdin=io.StringIO(stdin),
                         stdout=out)
    assert code == 0
    return etree.fromstring(out.getvalue().encode())


@pytest.mark.skipif(not RNG.exists(), reason="fence-agents' metadata.rng is not installed")
def test_metadata_validates_against_the_schema() -> None:
    schema = etree.RelaxNG(etree.parse(str(RNG)))
    root = metadata()
    assert schema.validate(root), schema.error_log


def test_metadata_from_stdin_like_pacemaker() -> None:
    root = metadata("action=metadata\n")
    assert root.get("name") == "fence_rhevm"


def test_parameters_of_fence_agents() -> None:
    root = metadata()
    params = {p.get("name"): p for p in root.iter("parameter")}
    for name in ("action", "ip", "ipaddr", "ipport", "login", "username", "passwd",
                 "password", "passwd_script", "password_script", "ssl", "ssl_secure",
                 "ssl_insecure", "notls", "port", "plug", "separator", "api_version",
                 "api_path", "disable_http_filter", "use_cookies", "cookie_file",
                 "power_wait", "shell_timeout", "power_timeout", "login_timeout",
                 "stonith_status_sleep", "retry_on", "delay", "disable_timeout",
                 "plug_separator", "verbose", "debug", "debug_file", "quiet"):
        assert name in params, name
    for old, new in (("ipaddr", "ip"), ("login", "username"), ("passwd", "password"),
                     ("port", "plug")):
        assert params[old].get("deprecated") == "1"
        assert params[new].get("obsoletes") == old
    assert params["ip"].get("required") == "1"
    assert params["username"].get("required") == "1"

    def content(name: str) -> etree._Element:
        found = params[name].find("content")
        assert found is not None
        return found

    assert content("api_version").get("type") == "select"
    assert content("api_version").get("default") == "auto"
    assert [o.get("value") for o in content("api_version")] == ["auto", "3", "4"]
    assert content("api_path").get("default") == "/ovirt-engine/api"
    assert content("disable_http_filter").get("type") == "boolean"
    # fence_rhevm's changed library defaults
    assert content("power_wait").get("default") == "1"
    assert content("shell_timeout").get("default") == "5"
    assert content("ipport").get("default") == "80"
    getopt = params["api_version"].find("getopt")
    assert getopt is not None and "--api-version" in (getopt.get("mixed") or "")


def test_actions() -> None:
    actions = [a.get("name") for a in metadata().iter("action")]
    assert actions[0] == "on"
    for action in ("off", "reboot", "status", "list", "list-status", "monitor", "metadata",
                   "validate-all"):
        assert action in actions


def test_validate_all_never_contacts_the_engine() -> None:
    stdin = ("action=validate-all\nip=192.0.2.1\nusername=admin@internal\npassword=x\n"
             "api_version=4\n")
    assert run_agent(rhevm.SPEC, rhevm.make_device, [], stdin=io.StringIO(stdin),
                     stdout=io.StringIO(), stderr=io.StringIO()) == 0


def test_bad_api_version_is_rejected() -> None:
    err = io.StringIO()
    stdin = ("action=status\nip=192.0.2.1\nusername=admin@internal\npassword=x\nplug=vm\n"
             "api_version=5\n")
    assert run_agent(rhevm.SPEC, rhevm.make_device, [], stdin=io.StringIO(stdin),
                     stdout=io.StringIO(), stderr=err) == 1
    assert "api-version" in err.getvalue()
