"""The libvirt backend: find, power off/on, reboot and list domains through libvirt-python.

Differences from the C backend, all on the safe side:

* ``off`` answers success only once libvirt shows the domain shut off (or a
  transient domain gone); the C backend answers right after virDomainDestroy.
* ``reboot`` answers failure when the domain cannot be started again.
* ``status`` of a domain this host does not have is a failure, not "off";
  ``lookup`` lets listeners stay silent for domains that are not ours.
* a dead connection (libvirtd restarted) is reopened, once per call, with a
  bounded wait; the C daemon blocks all fencing until libvirtd is back.

libvirt-python calls block, so the daemon runs them in worker threads; the
connection objects are thread-safe.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt

from guestfence.errors import BackendError
from guestfence.host.clusters import METADATA_NAMESPACE, parse_metadata_tag
from guestfence.virt.wire import VIR_DOMAIN_RUNNING, VIR_DOMAIN_SHUTOFF, HostRecord, Op, Result

T = TypeVar("T")

POWER_TIMEOUT = 15.0  # seconds to wait for libvirt to show the new state
POLL_INTERVAL = 0.05


@dataclass(frozen=True)
class DomainInfo:
    name: str
    uuid: str
    state: int
    uri: str


def canonical_uuid(text: str) -> str | None:
    """The lower-case canonical form if ``text`` is a UUID written canonically, else None."""
    try:
        parsed = uuidlib.UUID(text)
    except ValueError:
        return None
    return str(parsed) if str(parsed) == text.lower() else None


def _persistent(dom: Any) -> bool:
    """isPersistent(), read before the domain may vanish; unknown counts as persistent."""
    try:
        return bool(dom.isPersistent())
    except libvirt.libvirtError:
        return True


def _metadata_tag(dom: Any) -> str | None:
    """``<guestfence:cluster name="..."/>`` in the domain's <metadata>, read through libvirt."""
    try:
        xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NAMESPACE, 0)
    except libvirt.libvirtError:
        return None  # no such metadata (VIR_ERR_NO_DOMAIN_METADATA) or the domain vanished
    return parse_metadata_tag(xml)


def _silence_libvirt_stderr() -> None:
    # libvirt prints every error on stderr by default; we report them ourselves.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


class LibvirtBackend:
    name = "libvirt"

    def __init__(self, uris: Sequence[str], name_mode: str = "name",
                 power_timeout: float = POWER_TIMEOUT, claim_shut_off: bool = True) -> None:
        if not uris:
            raise BackendError("the libvirt backend needs at least one uri")
        _silence_libvirt_stderr()
        self.uris = tuple(uris)
        self.name_mode = name_mode
        self.power_timeout = power_timeout
        self.claim_shut_off = claim_shut_off
        self._conns: dict[str, Any] = {}
        self._lock = threading.Lock()
        for uri in self.uris:
            self._conns[uri] = self._open(uri)

    @staticmethod
    def _open(uri: str) -> Any:
        try:
            return libvirt.open(uri)
        except libvirt.libvirtError as e:
            raise BackendError(
                f"cannot connect to libvirt at {uri}: {e.get_error_message()}"
            ) from e

    def close(self) -> None:
        for conn in self._conns.values():
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
        self._conns.clear()

    # --------------------------------------------------------------- connection care

    def _with_conn(self, uri: str, call: Callable[[Any], T]) -> T:
        """Run ``call`` on the connection for ``uri``; reopen once if libvirtd went away."""
        conn = self._conns.get(uri)
        try:
            if conn is None:
                raise BackendError(f"no connection to {uri}")
            return call(conn)
        except (libvirt.libvirtError, BackendError) as first:
            alive = False
            if conn is not None:
                try:
                    alive = bool(conn.isAlive())
                except libvirt.libvirtError:
                    alive = False
            if alive:
                raise
            with self._lock:
                try:
                    self._conns[uri] = self._open(uri)
                except BackendError as e:
                    raise BackendError(f"{e} (connection lost: {first})") from e
            return call(self._conns[uri])

    def healthy(self) -> bool:
        try:
            for uri in self.uris:
                self._with_conn(uri, lambda c: c.getLibVersion())
        except (libvirt.libvirtError, BackendError):
            return False
        return True

    # --------------------------------------------------------------- lookups

    def _find(self, target: str) -> tuple[str, Any] | None:
        as_uuid = canonical_uuid(target)
        for uri in self.uris:
            def lookup(conn: Any) -> Any:
                try:
                    if as_uuid is not None:
                        return conn.lookupByUUIDString(as_uuid)
                    return conn.lookupByName(target)
                except libvirt.libvirtError as e:
                    if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        return None
                    raise
            dom = self._with_conn(uri, lookup)
            if dom is not None:
                return uri, dom
        return None

    def lookup(self, target: str) -> DomainInfo | None:
        try:
            found = self._find(target)
            if found is None:
                return None
            uri, dom = found
            return DomainInfo(dom.name(), dom.UUIDString(), dom.state()[0], uri)
        except libvirt.libvirtError as e:
            raise BackendError(f"lookup of {target!r} failed: {e.get_error_message()}") from e

    def owns(self, target: str) -> bool:
        """Whether this host answers for ``target`` on a shared multicast group.

        With ``claim_shut_off`` off, only a domain that is not shut off here counts:
        a host that kept the definition of a domain migrated away must not answer
        "off" (or fence "successfully") while the domain runs on another host.
        """
        info = self.lookup(target)
        if info is None:
            return False
        return self.claim_shut_off or info.state != VIR_DOMAIN_SHUTOFF

    def host_list(self) -> list[HostRecord]:
        records: dict[str, HostRecord] = {}
        for uri in self.uris:  # unlike the C backend, later URIs do not overwrite earlier ones
            domains = self._with_conn(uri, lambda c: c.listAllDomains(0))
            for dom in domains:
                try:
                    records.setdefault(
                        dom.UUIDString(), HostRecord(dom.name(), dom.UUIDString(), dom.state()[0])
                    )
                except libvirt.libvirtError:
                    continue  # a transient domain vanished while we listed
        return sorted(records.values(), key=lambda r: r.name.lower())

    def cluster_tag(self, target: str) -> str | None:
        """The guest cluster named in the domain's guestfence metadata, if any."""
        found = self._find(target)
        return None if found is None else _metadata_tag(found[1])

    def cluster_tags(self) -> dict[str, str]:
        """UUID (lower case) -> guest cluster tag, for every domain that has one."""
        tags: dict[str, str] = {}
        for uri in self.uris:
            for dom in self._with_conn(uri, lambda c: c.listAllDomains(0)):
                tag = _metadata_tag(dom)
                if tag is not None:
                    tags.setdefault(dom.UUIDString().lower(), tag)
        return tags

    # --------------------------------------------------------------- operations

    def execute(self, op: int, target: str) -> int:
        """Carry out one operation; the result byte. Never raises for a libvirt failure."""
        try:
            if op == Op.DEVSTATUS:
                return Result.SUCCESS if self.healthy() else Result.FAIL
            if op == Op.STATUS:
                info = self.lookup(target)
                if info is None:
                    return Result.FAIL
                return Result.OFF if info.state == VIR_DOMAIN_SHUTOFF else Result.SUCCESS
            if op == Op.OFF:
                return self._off(target)
            if op == Op.ON:
                return self._on(target)
            if op == Op.REBOOT:
                return self._reboot(target)
            return Result.FAIL  # NULL and unknown operations, as the C daemon answers
        except (libvirt.libvirtError, BackendError):
            return Result.FAIL

    def _off(self, target: str) -> int:
        found = self._find(target)
        if found is None:
            return Result.FAIL
        _, dom = found
        if dom.state()[0] == VIR_DOMAIN_SHUTOFF:
            return Result.SUCCESS
        transient = not _persistent(dom)  # read first: a destroyed transient domain is gone
        destroyed = self._destroy(dom)
        return Result.SUCCESS if self._wait_off(dom, destroyed and transient) else Result.FAIL

    @staticmethod
    def _destroy(dom: Any) -> bool:
        """virDomainDestroy; False if it failed (it may still have stopped by itself)."""
        try:
            dom.destroy()
            return True
        except libvirt.libvirtError:
            return False

    def _wait_off(self, dom: Any, vanish_is_off: bool) -> bool:
        """Shut off within power_timeout. A domain that vanished counts as off only if
        our destroy succeeded on a transient domain (``vanish_is_off``): after a failed
        destroy it may have been migrated away, and then it runs elsewhere."""
        deadline = time.monotonic() + self.power_timeout
        while True:
            try:
                if dom.state()[0] == VIR_DOMAIN_SHUTOFF:
                    return True
            except libvirt.libvirtError as e:
                if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return vanish_is_off
                raise
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL)

    def _on(self, target: str) -> int:
        found = self._find(target)
        if found is None:
            return Result.FAIL
        _, dom = found
        if dom.state()[0] != VIR_DOMAIN_SHUTOFF:
            return Result.SUCCESS
        dom.create()
        return Result.SUCCESS if self._wait_running(dom) else Result.FAIL

    def _wait_running(self, dom: Any) -> bool:
        deadline = time.monotonic() + self.power_timeout
        while dom.state()[0] != VIR_DOMAIN_RUNNING:
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_INTERVAL)
        return True

    def _reboot(self, target: str) -> int:
        found = self._find(target)
        if found is None:
            return Result.FAIL
        uri, dom = found
        if dom.state()[0] == VIR_DOMAIN_SHUTOFF:
            return Result.SUCCESS  # documented: reboot does not power on a VM that is off
        xml = dom.XMLDesc(0)
        persistent = _persistent(dom)
        if not self._wait_off(dom, self._destroy(dom) and not persistent):
            return Result.FAIL
        try:
            if persistent:
                dom.create()
            else:
                dom = self._with_conn(uri, lambda c: c.createXML(xml, 0))
        except libvirt.libvirtError:
            return Result.FAIL  # off is done, but the caller asked for a reboot
        return Result.SUCCESS if self._wait_running(dom) else Result.FAIL
