"""fence_vmware_soap: power fencing of vSphere VMs, a drop-in for fence-agents' agent.

Same options, stdin keys, plug forms and list format as fence-agents'
fence_vmware_soap (spec §3), built on pyVmomi instead of suds. What differs,
on purpose:

* The target is found without downloading the inventory (spec §6.9): a UUID
  plug goes to ``SearchIndex.FindAllByUuid`` (BIOS and instance UUIDs; two or
  more VMs with that UUID are an error naming them, where upstream took one of
  them arbitrarily), a
  plug starting with ``/`` to ``SearchIndex.FindByInventoryPath``; only a plain
  name needs a scan, and that scan retrieves the ``name`` property alone. A
  name used by two VMs is an error naming their UUIDs (upstream silently took
  the last one seen).
* ``status`` reads two properties of one VM, ``runtime.powerState`` and
  ``runtime.connectionState`` (a VM vCenter is not connected to has no
  trustworthy power state: unknown, so the action fails).
  ``poweredOn`` is on; ``poweredOff`` and ``suspended`` are off, as upstream.
* ``off`` and ``reboot`` power a suspended VM off for real (``force_off``):
  upstream said "Already OFF", and its reboot only powered on, which resumed
  the VM with its pre-fence memory. Once an off was sent, only ``poweredOff``
  counts as off, so the verification never accepts ``suspended``.
* ``on``/``off`` start the (hard) power task, wait for it, and report a
  permission fault as such; the framework then verifies the power state.
* TLS is the default and the certificate is verified (system trust store);
  ``ssl_insecure`` skips verification. ``plain_http`` exists for simulators.
* Every request has a timeout (login_timeout, or 15 s when timeouts are
  disabled under Pacemaker), and ``list-status`` prints ON/OFF rather than
  upstream's UNKNOWN.
"""

from __future__ import annotations

import http.client
import logging
import ssl
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pyVmomi import vim as _vim
from pyVmomi import vmodl as _vmodl
from pyVmomi.SoapAdapter import SoapStubAdapter as _SoapStubAdapter

from guestfence.agent.params import Param
from guestfence.agent.power import AgentFailure, State, run_agent
from guestfence.agent.standard import AgentSpec, Options
from guestfence.errors import ConfigError

log = logging.getLogger("guestfence.fence_vmware_soap")

# pyVmomi's type stubs cover part of the API only (no data object constructors, every
# ServiceContent member Optional): the dynamic API is used untyped, deliberately.
vim: Any = _vim
vmodl: Any = _vmodl
SoapStubAdapter: Any = _SoapStubAdapter

# vSphere 6.0 (vim25): every vCenter and ESXi in support still serves it, and
# fixing the version saves the version negotiation round trip (which has no timeout).
API_VERSION = "vim.version.version9"
LOGOUT_TIMEOUT = 2.0
TASK_POLL_MAX = 0.5
PAGE_SIZE = 1000

PARAMS = (
    Param("notls", "Accepted for compatibility and ignored: the agent negotiates TLS 1.2 or "
          "newer (fence-agents: force SSL 3.0)", short="t", long="notls", arity="none",
          content="boolean"),
    Param("plain_http", "Use plain HTTP, without TLS (simulators and test setups only; vCenter "
          "and ESXi refuse it)", long="plain-http", arity="none", content="boolean"),
)


def _check(options: Options) -> None:
    if "plain_http" in options and {"ssl", "ssl_secure", "ssl_insecure"} & set(options.values):
        raise ConfigError("plain_http cannot be combined with ssl, ssl_secure or ssl_insecure")


SPEC = AgentSpec(
    name="fence_vmware_soap",
    shortdesc="Fence agent for VMWare over SOAP API",
    longdesc="fence_vmware_soap powers virtual machines managed by VMware vCenter or ESXi off "
    "and on through the vSphere SOAP API (the power off is a hard one, not a guest "
    "shutdown). The plug is the VM's name, its BIOS UUID (config.uuid, as printed by list), "
    "or its inventory path starting with / (e.g. /datacenter/vm/folder/name). UUIDs and "
    "paths are looked up directly, which stays fast on large vCenters; a name needs a scan "
    "of all VM names and must be unique. A suspended VM counts as off. TLS is used and the "
    "certificate verified unless ssl_insecure is set. The account needs read access to the "
    "VMs and the privileges Virtual machine > Interaction > Power on / Power off.",
    vendor_url="https://www.vmware.com",
    params=PARAMS,
    ipaddr=True,
    ipport=443,
    login=True,
    passwd=True,
    ssl=True,
    has_plug=True,
    plugs_are_names=True,
    has_list=True,
    plug_desc="VM name, BIOS UUID or inventory path (starting with /) of the machine",
    validate=_check,
    # status says OFF for a suspended VM, but off/reboot must really power it off
    force_off=True,
)

_POWER_STATES = {"poweredOn": "on", "poweredOff": "off", "suspended": "off"}
_VSPHERE_ESCAPES = (("%2f", "/"), ("%2F", "/"), ("%5c", "\\"), ("%5C", "\\"), ("%25", "%"))


def vm_name(raw: str) -> str:
    """A VM name as users write it: vSphere stores '/', '\\' and '%' escaped."""
    for escaped, char in _VSPHERE_ESCAPES:
        raw = raw.replace(escaped, char)
    return raw


class VSphere:
    """One logged-in session to vCenter/ESXi: the PowerDevice of this agent."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.port = options.ipport or 443
        self.timeout = options.connect_timeout
        scheme = "http" if "plain_http" in options else "https"
        self.url = f"{scheme}://{options.ipaddr}:{self.port}/sdk"
        self._vms: dict[str, Any] = {}  # plug -> vim.VirtualMachine
        self._off_sent: set[str] = set()  # plugs set_power(off) was called for
        self._logged_in = False
        context: ssl.SSLContext | None = None
        if scheme == "https":
            context = ssl.create_default_context()
            if not options.ssl_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        # a negative port means plain HTTP to pyVmomi
        self.stub = SoapStubAdapter(host=options.ipaddr,
                                    port=-self.port if scheme == "http" else self.port,
                                    version=API_VERSION, sslContext=context,
                                    httpConnectionTimeout=self.timeout, poolSize=1)
        with self._remote("connect"):
            self.content = vim.ServiceInstance("ServiceInstance", self.stub).RetrieveContent()
        password = options.password or ""
        try:
            with self._remote("login"):
                self.content.sessionManager.Login(options.login, password, None)
        except AgentFailure:
            self.stub.DropConnections()
            raise
        self._logged_in = True
        log.debug("logged in to %s as %s", self.url, options.login)

    # -- errors ---------------------------------------------------------------------

    @contextmanager
    def _remote(self, what: str) -> Iterator[None]:
        """Turn whatever a vSphere call raises into one clear AgentFailure."""
        where = f"{self.options.ipaddr}:{self.port}"
        try:
            yield
        except vim.fault.InvalidLogin:
            raise AgentFailure(f"Failed: login to {self.url} as '{self.options.login}' refused "
                               "(InvalidLogin): wrong user name or password") from None
        except vim.fault.NoPermission as e:
            privilege = getattr(e, "privilegeId", None) or "?"
            obj = getattr(e, "object", None)
            raise AgentFailure(f"Failed: user '{self.options.login}' has no permission to "
                               f"{what} (NoPermission: missing privilege {privilege}"
                               f"{f' on {obj}' if obj is not None else ''})") from None
        except vmodl.fault.ManagedObjectNotFound:
            raise AgentFailure(f"Failed: {what}: the object no longer exists on {where} "
                               "(deleted meanwhile?)") from None
        except vmodl.MethodFault as e:
            text = getattr(e, "msg", "") or type(e).__name__
            raise AgentFailure(f"Failed: {what} on {where}: {type(e).__name__}: "
                               f"{text}") from None
        except ssl.SSLCertVerificationError as e:
            raise AgentFailure(f"Failed: server side certificate verification failed for "
                               f"{where} ({e.verify_message}): add its CA to the system trust "
                               "store, or set ssl_insecure=1 to skip verification") from None
        except ssl.SSLError as e:
            raise AgentFailure(f"Failed: TLS error with {where} during {what}: {e}") from None
        except TimeoutError:  # socket.timeout is TimeoutError
            raise AgentFailure(f"Failed: Connection timed out: no answer from {where} within "
                               f"{self.timeout:g} s ({what})") from None
        except (http.client.HTTPException, ConnectionResetError, BrokenPipeError) as e:
            raise AgentFailure(f"Failed: Connection lost to {where} during {what}: "
                               f"{type(e).__name__} {e}") from None
        except OSError as e:
            raise AgentFailure(f"Failed: Unable to connect to {where} ({what}): "
                               f"{e.strerror or e}") from None

    # -- property reads -------------------------------------------------------------

    def _retrieve(self, spec: Any) -> Iterator[Any]:
        """Every ObjectContent matching spec, page by page."""
        collector = self.content.propertyCollector
        options = vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=PAGE_SIZE)
        result = collector.RetrievePropertiesEx([spec], options)
        while result is not None:
            yield from result.objects
            if not result.token:
                break
            result = collector.ContinueRetrievePropertiesEx(result.token)

    def _read(self, obj: Any, paths: list[str]) -> dict[str, Any]:
        """Some properties of one object, in one round trip."""
        pc = vmodl.query.PropertyCollector
        spec = pc.FilterSpec(objectSet=[pc.ObjectSpec(obj=obj, skip=False)],
                             propSet=[pc.PropertySpec(type=type(obj), all=False,
                                                      pathSet=paths)])
        for content in self._retrieve(spec):
            missing = [m.path for m in content.missingSet or ()]
            if missing:
                fault = content.missingSet[0].fault
                raise fault if isinstance(fault, vmodl.MethodFault) else AgentFailure(
                    f"Failed: cannot read {', '.join(missing)} of {obj}")
            return {p.name: p.val for p in content.propSet}
        return {}

    def _all_vms(self, paths: list[str]) -> Iterator[tuple[Any, dict[str, Any]]]:
        """(VM, properties) of every VM, through a container view: only ``paths`` travel."""
        pc = vmodl.query.PropertyCollector
        view = self.content.viewManager.CreateContainerView(self.content.rootFolder,
                                                            [vim.VirtualMachine], True)
        try:
            traverse = pc.TraversalSpec(name="traverseEntities", type=vim.view.ContainerView,
                                        path="view", skip=False)
            spec = pc.FilterSpec(objectSet=[pc.ObjectSpec(obj=view, skip=True,
                                                          selectSet=[traverse])],
                                 propSet=[pc.PropertySpec(type=vim.VirtualMachine, all=False,
                                                          pathSet=paths)])
            for content in self._retrieve(spec):
                yield content.obj, {p.name: p.val for p in content.propSet}
        finally:
            try:
                view.DestroyView()
            except Exception as e:  # the session's logout removes it anyway
                log.debug("DestroyView failed: %s", e)

    # -- finding the VM -------------------------------------------------------------

    def vm(self, plug: str) -> Any:
        if plug not in self._vms:
            with self._remote(f"find VM '{plug}'"):
                self._vms[plug] = self._find(plug)
        return self._vms[plug]

    def _not_found(self, plug: str, how: str) -> AgentFailure:
        return AgentFailure(f"Failed: Unable to obtain correct plug status or plug is not "
                            f"available: no VM with {how} '{plug}' on {self.options.ipaddr} "
                            f"(or user '{self.options.login}' cannot see it)")

    def _find(self, plug: str) -> Any:
        index = self.content.searchIndex
        uuid = self.options.uuid_of(plug)
        if uuid is not None:
            found = self._by_uuid(uuid)
            if not found:
                raise self._not_found(plug, "UUID")
            if len(found) > 1:
                where = ", ".join(f"'{self._describe(vm)}'" for vm in found)
                raise AgentFailure(f"Failed: {len(found)} VMs have the UUID '{plug}' ({where}): "
                                   "give the VMs distinct UUIDs, or use the inventory path as "
                                   "plug")
            log.debug("VM %s is %s", plug, found[0])
            return found[0]
        if plug.startswith("/"):
            found = index.FindByInventoryPath(inventoryPath=plug.lstrip("/"))
            if found is None:
                raise self._not_found(plug, "inventory path")
            if not isinstance(found, vim.VirtualMachine):
                raise AgentFailure(f"Failed: inventory path '{plug}' is a "
                                   f"{type(found).__name__.split('.')[-1]}, not a virtual "
                                   "machine")
            return found
        matches = [vm for vm, props in self._all_vms(["name"])
                   if vm_name(str(props.get("name", ""))) == plug]
        if not matches:
            raise self._not_found(plug, "name")
        if len(matches) > 1:
            uuids = []
            for vm in matches:
                uuids.append(str(self._read(vm, ["config.uuid"]).get("config.uuid", "?")))
            raise AgentFailure(f"Failed: {len(matches)} VMs are named '{plug}' (BIOS UUIDs "
                               f"{', '.join(uuids)}): use the UUID, or the inventory path, "
                               "as plug")
        return matches[0]

    def _by_uuid(self, uuid: str) -> list[Any]:
        """Every distinct VM whose BIOS or instance UUID is uuid."""
        index = self.content.searchIndex
        found: dict[str, Any] = {}
        for instance in (False, True):
            try:
                vms = list(index.FindAllByUuid(uuid=uuid, vmSearch=True,
                                               instanceUuid=instance) or ())
            except vmodl.fault.MethodNotFound:
                # Not implemented by some servers (govmomi's vcsim 0.24): FindByUuid
                # returns one VM only, so a duplicate UUID cannot be detected there.
                log.debug("FindAllByUuid not implemented: FindByUuid used, duplicate "
                          "UUIDs go undetected")
                vm = index.FindByUuid(uuid=uuid, vmSearch=True, instanceUuid=instance)
                vms = [] if vm is None else [vm]
            for vm in vms:
                found.setdefault(str(vm._moId), vm)
        return list(found.values())

    def _describe(self, vm: Any) -> str:
        """'name' at its inventory path, for error messages (best effort)."""
        names: list[str] = []
        obj, root = vm, self.content.rootFolder
        try:
            for _ in range(64):  # the inventory is a tree, but be safe
                if obj is None or obj == root:
                    break
                props = self._read(obj, ["name", "parent"])
                names.append(vm_name(str(props.get("name", "?"))))
                parent = props.get("parent")
                if parent is None and isinstance(obj, vim.VirtualMachine):
                    parent = self._read(obj, ["parentVApp"]).get("parentVApp")
                obj = parent
        except Exception as e:  # a message must not fail on a detail
            log.debug("cannot build the inventory path of %s: %s", vm, e)
            return f"{names[0] if names else vm} ({vm})"
        return f"{names[0]} at /{'/'.join(reversed(names))}"

    # -- PowerDevice ----------------------------------------------------------------

    def status(self, plug: str) -> str:
        vm = self.vm(plug)
        with self._remote(f"read the power state of '{plug}'"):
            props = self._read(vm, ["runtime.powerState", "runtime.connectionState"])
        state = props.get("runtime.powerState")
        connection = props.get("runtime.connectionState")
        log.debug("VM %s: %s (%s)", plug, state, connection)
        if connection is not None and str(connection) != "connected":
            # disconnected, orphaned, inaccessible: vCenter only remembers the last
            # power state, which may be stale (the host may have restarted the VM)
            log.warning("VM %s is %s in vCenter: its power state is unknown", plug, connection)
            return "unknown"
        if plug in self._off_sent and str(state) == "suspended":
            # after an off, only poweredOff is off: a suspended VM resumes on power on
            return "not off yet"  # neither on nor off: the framework keeps polling
        return _POWER_STATES.get(str(state), "unknown")

    def set_power(self, plug: str, state: State) -> None:
        vm = self.vm(plug)
        what = f"power {state} VM '{plug}'"
        if state == "off":
            self._off_sent.add(plug)
            with self._remote(f"read the power state of '{plug}'"):
                current = self._read(vm, ["runtime.powerState"]).get("runtime.powerState")
            if str(current) == "poweredOff":
                log.debug("%s: already poweredOff", what)
                return
            if str(current) == "suspended":
                log.info("VM '%s' is suspended: powering it off (its saved state is "
                         "discarded)", plug)
        try:
            with self._remote(what):
                task = vm.PowerOnVM_Task() if state == "on" else vm.PowerOffVM_Task()
        except AgentFailure as e:
            if "InvalidPowerState" in str(e):  # it already is: the poll will confirm
                log.info("%s: %s", what, e)
                return
            raise
        self._wait(task, what)

    def _wait(self, task: Any, what: str) -> None:
        """Until the task ends: bounded by power_timeout seconds (0: Pacemaker decides)."""
        limit = self.options.number("power_timeout")
        deadline = time.monotonic() + limit if limit else None
        pause = 0.02
        while True:
            with self._remote(what):
                info = self._read(task, ["info.state", "info.error"])
            state = str(info.get("info.state"))
            if state == "success":
                log.debug("%s: task done", what)
                return
            if state == "error":
                fault = info.get("info.error")
                if isinstance(fault, vim.fault.InvalidPowerState):
                    log.info("%s: already in that state", what)
                    return
                if isinstance(fault, vmodl.MethodFault):
                    with self._remote(what):
                        raise fault
                raise AgentFailure(f"Failed: {what}: the task failed ({fault})")
            if deadline is not None and time.monotonic() >= deadline:
                raise AgentFailure(f"Failed: {what}: the task did not finish within {limit} s "
                                   f"(state {state})")
            time.sleep(pause)
            pause = min(pause * 2, TASK_POLL_MAX)

    def _rows(self, with_state: bool) -> dict[str, tuple[str, str]]:
        paths = ["name", "config.uuid"] + (["runtime.powerState"] if with_state else [])
        with self._remote("list the VMs"):
            vms = [props for _, props in self._all_vms(paths)]
        names = [vm_name(str(p.get("name", ""))) for p in vms]
        uuids = [str(p.get("config.uuid") or "").lower() for p in vms]
        rows: dict[str, tuple[str, str]] = {}
        warned: set[str] = set()
        for name, uuid_key, props in zip(names, uuids, vms, strict=True):
            uuid = str(props.get("config.uuid") or "")
            state = _POWER_STATES.get(str(props.get("runtime.powerState")), "unknown")
            shared_uuid = bool(uuid_key) and uuids.count(uuid_key) > 1
            if shared_uuid and uuid_key not in warned:
                warned.add(uuid_key)
                log.warning("BIOS UUID %s is used by %d VMs: they are listed by name only",
                            uuid, uuids.count(uuid_key))
            if names.count(name) > 1:
                if name not in warned:
                    warned.add(name)
                    log.warning("VM name '%s' is used by %d VMs: listed by UUID only",
                                name, names.count(name))
                if shared_uuid or not uuid:
                    log.warning("a VM named '%s' has a UUID shared with another VM or none: "
                                "not listed (use its inventory path as plug)", name)
                else:
                    rows[uuid] = ("", state)
            else:
                rows[name] = ("" if shared_uuid else uuid, state)
        return rows

    def list(self) -> dict[str, str]:
        return {plug: alias for plug, (alias, _) in self._rows(with_state=False).items()}

    def list_status(self) -> dict[str, tuple[str, str]]:
        return self._rows(with_state=True)

    def monitor(self) -> None:
        with self._remote("check the session"):
            vim.ServiceInstance("ServiceInstance", self.stub).CurrentTime()

    def close(self) -> None:
        if self._logged_in:
            self._logged_in = False
            _shorten_timeouts(self.stub, LOGOUT_TIMEOUT)
            try:
                self.content.sessionManager.Logout()
            except Exception as e:  # logging out is a courtesy
                log.debug("logout failed: %s", e)
        self.stub.DropConnections()


def _shorten_timeouts(stub: Any, seconds: float) -> None:
    """Logout at exit (maybe on SIGTERM) must not wait the full request timeout."""
    stub.schemeArgs["timeout"] = seconds
    for conn, _ in getattr(stub, "pool", ()):
        sock = getattr(conn, "sock", None)
        if sock is not None:
            sock.settimeout(seconds)


def make_device(options: Options) -> VSphere:
    return VSphere(options)


def main() -> None:
    sys.exit(run_agent(SPEC, make_device))


if __name__ == "__main__":
    main()
