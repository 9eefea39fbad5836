"""fence_vmware_soap's metadata: schema-valid, and the parameters of fence-agents' agent."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest
from lxml import etree

from guestfence.agent.power import run_agent
from guestfence.agents import vmware

RNG = Path("/usr/share/cluster/relaxng/metadata.rng")
UPSTREAM = "/usr/sbin/fence_vmware_soap"  # Debian's fence-agents
PAIRS = {"ip": "ipaddr", "username": "login", "password": "passwd",
         "password_script": "passwd_script", "plug": "port", "debug_file": "debug"}


def metadata(stdin: str = "action=metadata\n") -> etree._Element:
    out, err = io.StringIO(), io.StringIO()
    code = run_agent(vmware.SPEC, vmware.make_device, [], io.StringIO(stdin), stdout=out,
                     stderr=err)
    assert code == 0, err.getvalue()
    return etree.fromstring(out.getvalue().encode())


def params(root: etree._Element) -> dict[str, etree._Element]:
    return {p.get("name"): p for p in root.iter("parameter")}


def test_validates_against_fence_agents_schema() -> None:
    schema = etree.RelaxNG(etree.parse(str(RNG)))
    root = metadata()
    assert schema.validate(root), schema.error_log
    assert root.get("name") == "fence_vmware_soap"
    assert metadata("action=meta-data\n").get("name") == "fence_vmware_soap"


def test_has_the_fence_agents_parameters_and_aliases() -> None:
    found = params(metadata())
    for name in ("action", "ipport", "ssl", "ssl_secure", "ssl_insecure", "notls", "separator",
                 "login_timeout", "power_timeout", "power_wait", "shell_timeout", "delay",
                 "retry_on", "stonith_status_sleep", "disable_timeout", "plug_separator"):
        assert name in found, name
    for new, old in PAIRS.items():
        assert found[new].get("obsoletes") == old
        assert found[old].get("deprecated") == "1"
    for required in ("ip", "username", "plug"):
        assert found[required].get("required") == "1"
    assert found["password"].get("required") == "0"  # password or password_script
    assert found["ipport"].find("content").get("default") == "443"
    assert found["ssl_insecure"].find("content").get("type") == "boolean"


def test_actions_in_fence_agents_order() -> None:
    actions = [a.get("name") for a in metadata().iter("action")]
    assert actions == ["on", "off", "reboot", "status", "list", "list-status", "monitor",
                       "metadata", "manpage", "validate-all"]
    on = next(metadata().iter("action"))
    assert on.get("automatic") == "0" and on.get("on_target") is None


@pytest.mark.skipif(shutil.which(UPSTREAM) is None and not Path(UPSTREAM).exists(),
                    reason="fence-agents is not installed (make test-deps)")
def test_every_upstream_parameter_is_accepted() -> None:
    done = subprocess.run([UPSTREAM, "-o", "metadata"], capture_output=True, timeout=30,
                          check=True)
    upstream = set(params(etree.fromstring(done.stdout)))
    ours = set(params(metadata()))
    # gnutlscli_path: a helper binary path of fence-agents' SSL transport, not used here
    assert upstream - ours <= {"gnutlscli_path"}
    assert ours - upstream == {"plain_http"}


def test_validate_all_needs_no_device_and_checks_options() -> None:
    base = "action=validate-all\nip=vc.example.org\nusername=u\npassword=p\n"
    out, err = io.StringIO(), io.StringIO()
    assert run_agent(vmware.SPEC, vmware.make_device, [], io.StringIO(base), stdout=out,
                     stderr=err) == 0
    bad = base + "plain_http=1\nssl_insecure=1\n"
    assert run_agent(vmware.SPEC, vmware.make_device, [], io.StringIO(bad), stdout=out,
                     stderr=err) == 1
    assert "plain_http cannot be combined" in err.getvalue()
