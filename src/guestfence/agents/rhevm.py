"""fence_rhevm: power fencing of RHV / oVirt virtual machines through the engine's REST API.

A drop-in for fence-agents' fence_rhevm: same options and stdin keys, the same
requests (spec §4.2). The plug is the VM name. Differences, all deliberate:

* the search term is URL-encoded and quoted, and the VM whose name is exactly
  the plug is used, never just the first search hit (``db`` is not ``db-old``);
  a unique case-insensitive match is accepted (the engine's search ignores case);
  if no VM has that name and the plug is a UUID, it is used as the VM id;
* the API version is detected once per run (``api_version=auto``): the entry
  point is asked with ``Version: 4``, and an error page (or a v3 answer) makes
  the agent fall back to version 3, like the original;
* the session cookie of ``Prefer: persistent-auth`` is reused for every request
  of a run (Basic auth is still sent, so an expired session costs nothing);
  ``use_cookies`` drops Basic auth once a session exists and keeps the session in
  ``cookie_file`` (mode 0600) for the next run;
* ``off`` sends ``stop`` (a hard power-off, never ``shutdown``) and is verified
  by polling until the VM is ``down``; after ``start``, ``wait_for_launch`` still
  counts as off, so ``on`` is only reported once the VM is really launching;
* a VM without any status is reported as unknown (the original took it as off);
* ``list-status`` prints ON/OFF (the original printed UNKNOWN for every VM);
* HTTP errors name the cause (401 credentials, 403 permissions and the Filter
  header, 404 api_path or VM id, 5xx engine failure with the engine's reason),
  TLS is verified unless ``ssl_insecure``, and every request is bounded by
  ``login_timeout`` (connect) and ``shell_timeout`` (answer).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
import xml.etree.ElementTree as ET
from http.cookiejar import LoadError, MozillaCookieJar
from urllib.parse import quote

import requests

from guestfence.agent.params import Param
from guestfence.agent.power import AgentFailure, State, run_agent
from guestfence.agent.standard import CONNECT_TIMEOUT_CAP, AgentSpec, Options

log = logging.getLogger("guestfence.fence_rhevm")

DEFAULT_API_PATH = "/ovirt-engine/api"
EC_FETCH_VM_UUID = "Failed: Can not find VM UUID by its VM name given in the <plug> parameter"
# statuses that still count as "not started yet" after our own start request
NOT_YET_STARTED = frozenset({"down", "wait_for_launch"})

PARAMS = (
    Param("api_version", "Version of RHEV API", long="api-version", default="auto",
          content="select", choices=("auto", "3", "4"), metavar="version"),
    Param("api_path", "The path part of the API URL", long="api-path",
          default=DEFAULT_API_PATH, metavar="api_path"),
    Param("disable_http_filter", "Set HTTP Filter header to false", long="disable-http-filter",
          arity="none", content="boolean"),
    Param("use_cookies", "Reuse cookies for authentication", long="use-cookies",
          arity="none", content="boolean"),
    Param("cookie_file", "Path to cookie file for authentication", long="cookie-file",
          meta_default="$(tmpdir)/fence_rhevm_$(ipaddress)_$(login)_cookie.dat",
          metavar="cookie_file"),
    Param("notls", "Disable TLS negotiation and force SSL3.0. This should only be used for "
          "devices that do not support TLS1.0 and up. (Accepted for compatibility and "
          "ignored: guestfence always negotiates TLS.)", short="t", long="notls",
          arity="none", content="boolean"),
)

SPEC = AgentSpec(
    name="fence_rhevm",
    shortdesc="Fence agent for RHEV-M REST API",
    longdesc="fence_rhevm is a Power Fencing agent which can be used with RHEV-M REST API to "
    "fence virtual machines. The plug is the name of the virtual machine; the user (for "
    "example admin@internal, or a user with UserRole on the VMs thanks to the 'Filter: "
    "true' header) needs the permission to start and stop the VMs. 'off' is a hard "
    "power-off (stop), verified by polling until the VM is down.",
    vendor_url="https://www.ovirt.org",
    params=PARAMS,
    ipaddr=True,
    ipport=80,
    ssl_ipport=443,
    login=True,
    passwd=True,
    ssl=True,
    has_plug=True,
    plugs_are_names=True,
    has_list=True,
    defaults={"power_wait": "1", "shell_timeout": "5"},
    plug_desc="Physical plug number on device, UUID or identification of machine",
)


def _fault(response: requests.Response) -> str:
    """The engine's reason for an error answer (fault XML/JSON), or a short body."""
    text = response.text or ""
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        if "json" in response.headers.get("Content-Type", ""):
            try:
                data = response.json()
            except ValueError:
                data = None
            if isinstance(data, dict):
                parts = [str(data.get(k, "")) for k in ("reason", "detail")]
                return " ".join(p for p in parts if p)
        if "<html" in text.lower():
            return ""
        return " ".join(text.split())[:200]
    parts = [root.findtext("reason") or "", root.findtext("detail") or ""]
    return " ".join(p.strip() for p in parts if p.strip())


def _status_of(vm: ET.Element) -> str | None:
    """v4: <status>up</status>; v3: <status><state>up</state></status>."""
    status = vm.find("status")
    if status is None:
        return None
    state = status.findtext("state")
    value = state if state is not None else status.text
    return value.strip().lower() if value and value.strip() else None


# The engine does not know these VMs' real state (host unreachable, lost, locked):
# never "off", and not "on" either: the caller fails instead of guessing.
UNKNOWN_STATUSES = frozenset({"unknown", "not_responding", "unassigned"})


def _power_state(status: str | None) -> str:
    if status is None or status in UNKNOWN_STATUSES:
        return "unknown"
    return "off" if status == "down" else "on"


class Engine:
    """One run's connection to the engine: a requests session with fixed headers."""

    def __init__(self, options: Options) -> None:
        self.options = options
        host = options.ipaddr
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 literal
        scheme = "https" if options.ssl else "http"
        path = "/" + (options.get("api_path") or DEFAULT_API_PATH).strip().strip("/")
        self.base = f"{scheme}://{host}:{options.ipport}{path.rstrip('/')}"
        read = options.number("shell_timeout")
        # shell_timeout 0 (timeouts disabled under Pacemaker) must not mean "wait forever"
        # for an answer: cap it as the connect timeout is capped
        self.timeout = (options.connect_timeout,
                        float(read) if read else float(CONNECT_TIMEOUT_CAP))
        self.session = requests.Session()
        self.verify = options.ssl_verify
        self.password = options.password or ""
        self.use_cookies = "use_cookies" in options
        self.cookie_file = options.get("cookie_file") or os.path.join(
            tempfile.gettempdir(), f"fence_rhevm_{options.ipaddr}_{options.login}_cookie.dat")
        self.filter = "false" if "disable_http_filter" in options else "true"
        self.version = options.get("api_version") or "auto"
        if options.ssl and not options.ssl_verify:
            log.debug("ssl_insecure: the engine's certificate is not verified")
        if self.use_cookies:
            self._load_cookies()

    # --- HTTP ------------------------------------------------------------------------

    def headers(self, version: str) -> dict[str, str]:
        return {"Version": version, "Content-Type": "application/xml",
                "Accept": "application/xml", "Prefer": "persistent-auth",
                "Filter": self.filter}

    def request(self, method: str, path: str, *, body: str | None = None,
                version: str | None = None, ok: tuple[int, ...] = ()) -> requests.Response:
        """One request; HTTP errors other than ``ok`` statuses become AgentFailure."""
        url = self.base + path
        ver = version or self.version
        use_basic = not (self.use_cookies and self._has_session())
        response = self._send(method, url, body, ver, use_basic)
        if response.status_code == 401 and not use_basic:
            log.debug("session cookie rejected; logging in again with Basic auth")
            self.session.cookies.clear()
            response = self._send(method, url, body, ver, True)
        if response.status_code < 400 or response.status_code in ok:
            return response
        raise AgentFailure(self._describe(method, url, response))

    def _send(self, method: str, url: str, body: str | None, version: str,
              basic: bool) -> requests.Response:
        log.debug("%s %s (Version: %s, Filter: %s)", method, url, version, self.filter)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # urllib3's InsecureRequestWarning
                response = self.session.request(
                    method, url, data=body.encode() if body is not None else None,
                    headers=self.headers(version), timeout=self.timeout,
                    auth=(self.options.login, self.password) if basic else None,
                    verify=self.verify,
                    allow_redirects=False)
        except requests.exceptions.SSLError as e:
            raise AgentFailure(
                f"Failed: TLS connection to {url} failed: {_reason(e)}. The engine's "
                "certificate must be trusted by the system (or REQUESTS_CA_BUNDLE); "
                "ssl_insecure=1 skips the verification") from None
        except requests.exceptions.Timeout as e:
            what = "connect" if isinstance(e, requests.exceptions.ConnectTimeout) else "answer"
            raise AgentFailure(f"Failed: Connection timed out: no {what} from {url} within "
                               f"the timeout (login_timeout/shell_timeout)") from None
        except requests.exceptions.ConnectionError as e:
            raise AgentFailure(f"Failed: Unable to connect to {url}: {_reason(e)}") from None
        except requests.exceptions.RequestException as e:
            raise AgentFailure(f"Failed: {method} {url}: {_reason(e)}") from None
        log.debug("-> HTTP %d (%d bytes)", response.status_code, len(response.content))
        if 300 <= response.status_code < 400:
            raise AgentFailure(
                f"Failed: {url} redirects to {response.headers.get('Location', '?')}: "
                "check ssl, ipport and api_path")
        return response

    def _describe(self, method: str, url: str, response: requests.Response) -> str:
        code = response.status_code
        reason = _fault(response)
        detail = f": {reason}" if reason else ""
        head = f"Failed: {method} {url}: HTTP {code} {response.reason or ''}".rstrip()
        if code == 401:
            return (f"{head}: login denied for '{self.options.login}': check username "
                    "(user@domain, e.g. admin@internal) and password")
        if code == 403:
            hint = ("the user needs a role that allows starting and stopping this VM "
                    "(e.g. UserRole or PowerUserRole on the VM)" if self.filter == "true" else
                    "with disable_http_filter the user needs administrator permissions; "
                    "a user-level account works only with the filter on")
            return f"{head}{detail}: permission denied for '{self.options.login}': {hint}"
        if code == 404:
            return f"{head}{detail}: not found (check api_path and the VM)"
        if code >= 500:
            return f"{head}{detail}: the engine failed; check its health (engine.log)"
        return f"{head}{detail}"

    def _has_session(self) -> bool:
        return any(c.name == "JSESSIONID" for c in self.session.cookies)

    def _load_cookies(self) -> None:
        jar = MozillaCookieJar(self.cookie_file)
        try:
            jar.load(ignore_discard=True, ignore_expires=False)
        except (OSError, LoadError) as e:
            log.debug("no usable cookie file %s: %s", self.cookie_file, e)
            return
        for cookie in jar:
            self.session.cookies.set_cookie(cookie)

    def save_cookies(self) -> None:
        jar = MozillaCookieJar(self.cookie_file)
        for cookie in self.session.cookies:
            jar.set_cookie(cookie)
        old = os.umask(0o077)
        try:
            jar.save(ignore_discard=True)
        except OSError as e:
            log.warning("Unable to save cookie file %s: %s", self.cookie_file, e)
        finally:
            os.umask(old)

    # --- API -------------------------------------------------------------------------

    def detect_version(self) -> None:
        """api_version=auto: ask the entry point with Version 4; an error page or a v3
        answer means version 3 (the original only looked for ``<title>Error</title>``)."""
        if self.version != "auto":
            return
        response = self.request("GET", "/", version="4", ok=(400, 404, 406))
        if "<title>Error</title>" in response.text or response.status_code in (400, 406):
            log.debug("the engine does not speak API v4; using v3")
            self.request("GET", "/", version="3")
            self.version = "3"
        elif response.status_code == 404:
            raise AgentFailure(self._describe("GET", self.base + "/", response))
        elif _looks_like_v3(response.text):
            self.version = "3"
        else:
            self.version = "4"
        log.debug("using oVirt API version %s", self.version)

    def xml(self, path: str) -> ET.Element:
        response = self.request("GET", path)
        try:
            return ET.fromstring(response.content)
        except ET.ParseError as e:
            raise AgentFailure(f"Failed: GET {self.base + path}: the engine's answer is not "
                               f"XML ({e})") from None

    def vms(self, name: str | None = None) -> list[ET.Element]:
        path = "/vms"
        # a name the search syntax cannot quote is looked for in the whole list
        if name is not None and '"' not in name and "\\" not in name:
            path += "?search=" + quote(f'name="{name}"', safe="")
        return self.xml(path).findall("vm")

    def action(self, vm_id: str, verb: str) -> None:
        path = f"/vms/{quote(vm_id, safe='')}/{verb}"
        response = self.request("POST", path, body="<action/>", ok=(409,))
        if response.status_code == 409:
            raise _Conflict(_fault(response) or "conflict")

    def close(self) -> None:
        if self.use_cookies:
            self.save_cookies()
        self.session.close()


class _Conflict(Exception):
    """409: the engine refused the action in the VM's current state."""


def _looks_like_v3(text: str) -> bool:
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return False
    version = root.find("product_info/version")
    return version is not None and version.get("major") == "3"


def _reason(error: BaseException) -> str:
    """The innermost reason of a requests/urllib3 exception, without the wrapping noise."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    reason = getattr(error, "reason", None)
    if isinstance(reason, BaseException):
        error = reason
    text = str(error)
    return text.split(": ", 1)[-1] if "object at 0x" in text else text


class RhevmDevice:
    """The PowerDevice: plug (VM name) -> VM id, looked up once per run."""

    def __init__(self, options: Options) -> None:
        self.engine = Engine(options)
        self.ids: dict[str, str] = {}
        self.started: set[str] = set()
        self.detected = False

    def _ready(self) -> Engine:
        if not self.detected:
            self.engine.detect_version()
            self.detected = True
        return self.engine

    def vm_id(self, plug: str) -> str:
        if plug in self.ids:
            return self.ids[plug]
        engine = self._ready()
        found = [vm for vm in engine.vms(plug) if vm.get("id")]
        exact = [vm for vm in found if (vm.findtext("name") or "") == plug]
        if not exact:
            exact = [vm for vm in found if (vm.findtext("name") or "").lower() == plug.lower()]
            if len(exact) > 1:
                names = ", ".join(sorted(vm.findtext("name") or "" for vm in exact))
                raise AgentFailure(f"{EC_FETCH_VM_UUID}: '{plug}' matches several VMs "
                                   f"when case is ignored: {names}")
        if len(exact) > 1:
            raise AgentFailure(f"{EC_FETCH_VM_UUID}: several VMs are named '{plug}'")
        if exact:
            vm_id = exact[0].get("id") or ""
        elif self.engine.options.uuid_of(plug) is not None:
            vm_id = plug  # no VM of that name: try the plug as a VM id
        else:
            others = sorted(vm.findtext("name") or "" for vm in found)
            near = f" (the search also returned: {', '.join(others)})" if others else ""
            seen = ("VMs the user has permissions on" if engine.filter == "true"
                    else "all VMs")
            raise AgentFailure(f"{EC_FETCH_VM_UUID}: no VM named '{plug}' among the {seen}"
                               f"{near}")
        log.debug("VM '%s' has id %s", plug, vm_id)
        self.ids[plug] = vm_id
        return vm_id

    def vm_status(self, plug: str) -> str | None:
        vm_id = self.vm_id(plug)
        return _status_of(self.engine.xml(f"/vms/{quote(vm_id, safe='')}"))

    def status(self, plug: str) -> str:
        status = self.vm_status(plug)
        log.debug("VM '%s' is %s", plug, status)
        if plug in self.started and status in NOT_YET_STARTED:
            return "off"
        return _power_state(status)

    def set_power(self, plug: str, state: State) -> None:
        verb = "start" if state == "on" else "stop"  # stop: hard power-off
        vm_id = self.vm_id(plug)
        try:
            self.engine.action(vm_id, verb)
        except _Conflict as e:
            # e.g. "VM is not running": fine if the VM is already where we want it
            if _power_state(self.vm_status(plug)) != state:
                raise AgentFailure(f"Failed: the engine refused to {verb} VM '{plug}': "
                                   f"{e}") from None
            log.debug("%s of '%s' refused (%s) but the VM is already %s", verb, plug, e, state)
        if state == "on":
            self.started.add(plug)
        else:
            self.started.discard(plug)

    def list_status(self) -> dict[str, tuple[str, str]]:
        rows: dict[str, tuple[str, str]] = {}
        for vm in self._ready().vms():
            name = vm.findtext("name")
            if name:
                rows[name] = ("", _power_state(_status_of(vm)))
        return rows

    def list(self) -> dict[str, str]:
        return {name: alias for name, (alias, _) in self.list_status().items()}

    def close(self) -> None:
        self.engine.close()


def make_device(options: Options) -> RhevmDevice:
    return RhevmDevice(options)


def main() -> None:
    sys.exit(run_agent(SPEC, make_device))


if __name__ == "__main__":
    main()
