"""fence_xvm and fence_virt: the guest-side clients of fence_virtd / guestfenced.

Same options, stdin keys, defaults, output strings and exit codes as the C
clients of fence-agents 4.12.1 (exit code = the daemon's result byte: 0 ok/on,
1 failure, 2 off, 3 permission denied). Behaviour we deliberately fix:

* the multicast call-back listens on an ephemeral port per invocation (the C
  client binds the fixed port 1229, so parallel clients collide);
* the total time is bounded and odd timeout/retrans values cannot loop forever;
* stdin values are kept whole (``plug=my vm`` is "my vm", not "my");
* a missing default key file is an error, not a silent downgrade to unsigned
  requests (which a default daemon ignores, so fencing just timed out);
* messages other than results go to stderr.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import time
from collections.abc import Sequence

from guestfence.agent.params import ParamTable, UsageError, parse_int
from guestfence.agents import virtparams
from guestfence.errors import AuthError, GuestfenceError, KeyFileError
from guestfence.record import Record
from guestfence.virt.handshake import ClientOutcome
from guestfence.virt.wire import (
    DEFAULT_IPV4_GROUP,
    DEFAULT_IPV6_GROUP,
    DEFAULT_KEY_FILE,
    DOMAIN_MAX,
    FLAG_TARGET_IS_UUID,
    FenceRequest,
    HashType,
    Op,
    Result,
    SerialRequest,
    read_key,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

PROTOCOL_VERSION = "1.9.0"
OPS = {
    "null": Op.NULL,
    "off": Op.OFF,
    "reboot": Op.REBOOT,
    "on": Op.ON,
    "status": Op.STATUS,
    "monitor": Op.DEVSTATUS,
    "list": Op.HOSTLIST,
    "list-status": Op.HOSTLIST,
}
LOCAL_ACTIONS = {"metadata", "meta-data", "manpage", "validate-all"}
NO_TARGET_ACTIONS = {"monitor", "list", "list-status", "metadata", "meta-data", "manpage"}
UNDELAYED_ACTIONS = {"status", "monitor", "list", "list-status"}


class Invocation(Record):
    __slots__ = ("action", "domain", "prog", "values")
    prog: str
    action: str
    domain: str
    values: dict[str, str]

    def __init__(self, prog: str, action: str, domain: str, values: dict[str, str]) -> None:
        self._set(prog=prog, action=action, domain=domain, values=values)


class Failure(GuestfenceError):
    """Ends the run: message on stderr, then exit code."""

    def __init__(self, message: str, code: int = 1, usage: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.usage = usage


def _err(text: str) -> None:
    sys.stderr.write(text if text.endswith("\n") else text + "\n")


def run(prog: str, argv: Sequence[str], stdin: TextIO | None = None) -> int:
    is_xvm = prog == "fence_xvm"
    params = virtparams.XVM_PARAMS if is_xvm else virtparams.VIRT_PARAMS
    table = ParamTable(params)
    try:
        parsed = table.parse(argv, stdin, {"h": "help", "?": "help", "V": "version"})
    except UsageError as e:
        _err(str(e))
        _err(virtparams.usage(prog, params))
        return 1
    for warning in parsed.warnings:
        _err(warning)
    if parsed.help:
        sys.stdout.write(virtparams.usage(prog, params))
        return 0
    if parsed.version:
        from guestfence import __version__

        sys.stdout.write(f"{prog} {PROTOCOL_VERSION}\nguestfence {__version__}\n")
        return 0
    try:
        inv = _validate(prog, table, parsed.values)
        if inv.action in ("metadata", "meta-data", "manpage"):
            from guestfence.agent.metadata import render_metadata

            sys.stdout.write(render_metadata(virtparams.metadata(prog, params)))
            return 0
        if inv.action == "validate-all":
            return 0
        return _execute(inv, is_xvm)
    except Failure as f:
        _err(str(f))
        if f.usage and parsed.values.get("action", "").lower() != "validate-all":
            _err(virtparams.usage(prog, params))
        return f.code


def _validate(prog: str, table: ParamTable, given: dict[str, str]) -> Invocation:
    values = table.with_defaults(given)
    action = values["action"].strip().lower()
    if action not in OPS and action not in LOCAL_ACTIONS:
        raise Failure(f"Unsupported operation: {values['action']}", usage=True)
    named = [given[n] for n in ("plug", "port", "domain") if given.get(n)]
    if len(set(named)) > 1:
        # The C client refuses any repetition; identical values (Pacemaker may send
        # plug and port alike) are harmless, so we only refuse a real conflict.
        raise Failure("Domain/UUID may not be specified more than once", usage=True)
    domain = named[0] if named else ""
    if len(domain.encode()) > DOMAIN_MAX:
        raise Failure(f"Invalid domain name: '{domain}' (File name too long)", usage=True)
    if not domain and action not in NO_TARGET_ACTIONS:
        raise Failure("No domain specified!", usage=True)
    try:
        parse_int(values, "timeout", 1)
        parse_int(values, "delay", 0)
        parse_int(values, "ipport", 1, 65535)
        if "retrans" in values:
            parse_int(values, "retrans", 1)
        for name in ("hash", "auth"):
            HashType.from_name(values[name])
    except (UsageError, ValueError) as e:
        raise Failure(str(e), usage=True) from None
    if "ip_family" in values and values["ip_family"].lower() not in ("auto", "ipv4", "ipv6"):
        raise Failure(f"Invalid IP family: '{values['ip_family']}'; expected auto, ipv4 or ipv6",
                      usage=True)
    if "vsock" in values:
        try:
            parse_int(values, "vsock", 2, 0xFFFFFFFE)
        except UsageError as e:
            raise Failure(str(e), usage=True) from None
    if "key_file" in given and not os.path.exists(given["key_file"]):
        raise Failure(f"Invalid key file: '{given['key_file']}' (No such file or directory)",
                      usage=True)
    return Invocation(prog, action, domain, values)


def _load_key(inv: Invocation, hash_type: HashType, auth: HashType) -> bytes:
    if hash_type is HashType.NONE and auth is HashType.NONE:
        return b""
    path = inv.values.get("key_file", DEFAULT_KEY_FILE)
    try:
        return read_key(path)
    except KeyFileError as e:
        raise Failure(
            f"{e}\nCopy the host's key to {path} (mode 0600), or pass -k FILE "
            "(stdin: key_file=FILE)."
        ) from None


def _execute(inv: Invocation, is_xvm: bool) -> int:
    from guestfence.agents import transport

    values = inv.values
    log = transport.Logger(int(values.get("debug", "0") or "0"))
    timeout = float(parse_int(values, "timeout", 1))
    delay = parse_int(values, "delay", 0)
    if delay and inv.action not in UNDELAYED_ACTIONS:
        log(1, f"Delay: sleeping {delay} seconds before acting")
        time.sleep(delay)
    op = OPS[inv.action]
    port = parse_int(values, "ipport", 1, 65535)
    hash_type = HashType.from_name(values["hash"])
    auth = HashType.from_name(values["auth"])
    try:
        if is_xvm:
            key = _load_key(inv, hash_type, auth)
            family = _xvm_family(values)
            group = values.get("multicast_address") or (
                DEFAULT_IPV6_GROUP if family == socket.AF_INET6 else DEFAULT_IPV4_GROUP
            )
            flags = FLAG_TARGET_IS_UUID if int(values.get("use_uuid", "0") or "1") else 0
            request = FenceRequest(op=op, domain=inv.domain, hash_type=hash_type, flags=flags)
            outcome = transport.multicast_exchange(
                transport.MulticastTarget(group, port, family),
                request,
                key,
                auth,
                retrans=parse_int(values, "retrans", 1) / 10.0,
                timeout=timeout,
                log=log,
            )
        elif "vsock" in values or "ipaddr" in values:
            key = _load_key(inv, hash_type, auth)
            block = FenceRequest(op=op, domain=inv.domain, hash_type=hash_type,
                                 seqno=transport.fresh_seqno()).sign(key)
            if "vsock" in values:
                conn = transport.vsock_connect(int(values["vsock"]), port)
            else:
                conn = transport.tcp_connect(values["ipaddr"], port)
            outcome = transport.stream_exchange(conn, block, key, auth, timeout)
        else:
            outcome = _serial(inv, op, port, timeout)
    except Failure:
        raise
    except AuthError as e:
        raise Failure(str(e)) from None
    except GuestfenceError as e:  # timeouts, transport and protocol errors
        raise Failure(f"{e}\nOperation failed") from None
    return _report(inv, outcome)


def _xvm_family(values: dict[str, str]) -> int:
    choice = values.get("ip_family", "auto").lower()
    if choice == "ipv6":
        return socket.AF_INET6
    if choice == "ipv4":
        return socket.AF_INET
    address = values.get("multicast_address", "")
    if "." in address:
        return socket.AF_INET
    if ":" in address:
        return socket.AF_INET6
    return socket.AF_INET


def _serial(inv: Invocation, op: int, port: int, timeout: float) -> ClientOutcome:
    from guestfence.agents import serialdev, transport

    request = SerialRequest(op=op, domain=inv.domain, seqno=transport.fresh_seqno())
    device = inv.values.get("serial_device")
    if device:
        fd = serialdev.open_serial(device, inv.values["serial_params"])
        try:
            return transport.serial_exchange(fd, request, timeout)
        finally:
            os.close(fd)
    address = inv.values["channel_address"]
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise Failure(f"Invalid channel address: '{address}'") from None
    sock = next(transport.tcp_connect(address, port))
    with sock:
        return transport.serial_exchange(sock, request, timeout)


def _report(inv: Invocation, outcome: ClientOutcome) -> int:
    code = outcome.result
    if code is None:
        raise Failure("Operation failed")
    if code == Result.HOSTLIST:
        if inv.action not in ("list", "list-status"):
            # a host list answers only a list request: a stale or garbled one must not
            # pass for success (or for "on") of anything else
            _err(f"Unexpected host list in answer to {inv.action}")
            return 1
        for host in outcome.hosts:
            sys.stdout.write(f"{host.name:<32} {host.uuid} {'on' if host.is_on else 'off'}\n")
        return 0
    if code == Result.SUCCESS:
        if inv.action == "status":
            sys.stdout.write("Status: ON\n")
        return 0
    if code == Result.OFF:
        if inv.action == "status":
            sys.stdout.write("Status: OFF\n")
        return 2
    if code == Result.FAIL:
        _err("Operation failed")
        return 1
    if code == Result.PERM:
        _err("Permission denied")
        return 3
    signed = code - 256 if code > 127 else code
    _err(f"Unknown response ({signed})")
    return code & 0xFF


def main_for(prog: str) -> None:
    sys.exit(run(prog, sys.argv[1:]))

