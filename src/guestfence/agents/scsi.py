"""fence_scsi: I/O fencing with SCSI-3 persistent reservations, a drop-in for fence-agents'.

Same options, stdin keys, key derivation and actions as fence-agents'
fence_scsi, so a cluster can mix both: ``on`` unfences this node (register
its key everywhere, reserve type 5 if nobody holds a reservation), ``off``
fences the node named by plug/nodename (or the key given) with PREEMPT AND
ABORT, ``status`` says whether that node's key is registered anywhere.

Devices are block devices (SG_IO) or iscsi:// URLs (libiscsi). Differences,
all on the safe side: every action covers every device in parallel and is
verified; a target that rejects PREEMPT AND ABORT fails the fencing unless
``preempt_fallback`` is set (then PREEMPT, with a warning); ``monitor``
checks the devices; the key files live in our own state directory (the
fence-agents locations are still read for this node's key).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys

from guestfence.agent.params import Param
from guestfence.agent.power import AgentFailure, run_agent
from guestfence.agent.standard import AgentSpec, Options
from guestfence.errors import GuestfenceError
from guestfence.scsi.fencing import SharedStorage
from guestfence.scsi.keys import derive_key, normalise_key, parse_cluster_name
from guestfence.scsi.transport import ScsiTransport

DEFAULT_STATE_DIR = "/run/guestfence"
UPSTREAM_KEY_FILES = ("/var/run/cluster/fence_scsi.key", "/var/run/cluster.key")
INITIATOR_FILE = "/etc/iscsi/initiatorname.iscsi"
log = logging.getLogger("guestfence.fence_scsi")

PARAMS = (
    Param("devices", "List of devices to use for current operation. Devices can be comma or "
          "space separated list of raw devices (eg. /dev/sdc) or iSCSI LUNs "
          "(iscsi://host[:port]/target-iqn/lun).", short="d", long="devices",
          metavar="devices"),
    Param("key", "Key to use for the current operation. This key should be unique to a node. "
          "For the \"on\" action, the key specifies the key use to register the local node. "
          "For the \"off\" action, this key specifies the key to be removed from the device(s).",
          short="k", long="key", metavar="key"),
    Param("aptpl", "Use the APTPL flag for registrations. This option is only used for the "
          "'on' action.", short="a", long="aptpl", arity="none", content="boolean"),
    Param("key_value", "Method used to generate the SCSI key. \"id\" (default) uses the "
          "positional ID from \"corosync-cmaptctl nodelist\" output which can get inconsistent "
          "when nodes are removed from cluster without full cluster restart. \"hash\" uses "
          "part of hash made out of node names which is not affected over time but there is "
          "theoretical chance that hashes can collide as size of SCSI key is quite limited.",
          long="key-value", default="id", content="select", choices=("id", "hash"),
          metavar="<id|hash>"),
    Param("nodename", "Name of the node to be fenced (sent by Pacemaker; overrides plug)",
          long="nodename", metavar="name"),
    Param("logfile", "Log output (stdout and stderr) to file", short="f", long="logfile",
          metavar="filename"),
    Param("corosync_cmap_path", "Path to corosync-cmapctl binary",
          long="corosync-cmap-path", default="/usr/sbin/corosync-cmapctl", metavar="path"),
    Param("readonly", "Open DEVICE read-only.", long="readonly", arity="none",
          content="boolean"),
    Param("suppress_errors", "Error log suppression.", long="suppress-errors", arity="none",
          content="boolean"),
    Param("mpath_register_method", "Method used to register multipath devices (accepted "
          "for compatibility; guestfence registers on the device given)",
          long="mpath-register-method", default="multi", content="select",
          choices=("multi", "single"), metavar="method"),
    Param("preempt_fallback", "If the target rejects PREEMPT AND ABORT, fence with PREEMPT "
          "(the victim's queued commands are then not aborted). Off by default: such a "
          "target is reported as unfit.", long="preempt-fallback", arity="none",
          content="boolean"),
    Param("initiator_name", "iSCSI initiator name for iscsi:// devices (default: "
          f"{INITIATOR_FILE}, else one derived from the host name)", long="initiator-name",
          metavar="iqn"),
    Param("state_dir", "Directory for this node's key and device list",
          long="state-dir", default=DEFAULT_STATE_DIR, metavar="dir"),
)

SPEC = AgentSpec(
    name="fence_scsi",
    shortdesc="Fence agent for SCSI persistent reservation",
    longdesc="fence_scsi cuts a failed node off shared storage with SCSI-3 persistent "
    "reservations; it does not power the node off. Every node registers its own key on each "
    "shared LUN when it joins (action on, run by Pacemaker on that node: unfencing), and one "
    "Write Exclusive - Registrants Only reservation lets only registered nodes write. To "
    "fence a node, its key is removed from every LUN with PREEMPT AND ABORT, which also "
    "aborts the commands it has queued; from then on its writes fail with RESERVATION "
    "CONFLICT. The LUNs must support persistent reservations including PREEMPT AND ABORT "
    "(guestfence storage-check tells). Keys are derived from the cluster name and the node, "
    "as fence-agents does: key_value=hash (recommended) from the node name, key_value=id "
    "from its position in the corosync nodelist, which changes when nodes are removed. The "
    "fenced node keeps running: reboot it by hand, or let a watchdog do it with "
    "fence_scsi_check.",
    vendor_url="https://www.t10.org",
    params=PARAMS,
    has_plug=True,
    has_list=True,
    fabric=True,
    force_on=True,
    force_off=True,
    on_target=True,
    shorts={"delay": "H"},
    plug_override="nodename",
    plug_optional_with=("key",),
    plug_desc="Name of the node to be fenced. The node name is used to generate the key "
    "value used for the current operation. This option will be ignored when used with the "
    "-k option.",
)


# ----------------------------------------------------------------------------- keys


def _cmapctl(options: Options, *args: str) -> str:
    path = options.get("corosync_cmap_path") or "corosync-cmapctl"
    try:
        done = subprocess.run([path, *args], capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AgentFailure(f"Failed: cannot run {path}: {e}") from None
    if done.returncode != 0:
        raise AgentFailure(f"Failed: {path} {' '.join(args)} exited with {done.returncode}: "
                           f"{done.stderr.strip()}")
    return done.stdout


def node_key(options: Options, node: str) -> int:
    """The key of ``node``, derived like fence-agents (or the ``key`` option)."""
    if options.get("key"):
        return int(normalise_key(options.get("key") or ""), 16)
    if not node:
        raise AgentFailure("Failed: no node name (plug/port/nodename) and no key given")
    cluster = parse_cluster_name(_cmapctl(options, "totem.cluster_name"))
    method = options.get("key_value") or "id"
    nodelist = _cmapctl(options, "nodelist") if method == "id" else ""
    return int(derive_key(cluster, node, method, nodelist), 16)


class StateFiles:
    """This node's key and the devices it registered on (read by off and the watchdog)."""

    def __init__(self, directory: str) -> None:
        self.key_path = os.path.join(directory, "fence_scsi.key")
        self.dev_path = os.path.join(directory, "fence_scsi.dev")
        self.directory = directory

    def save(self, key: int, devices: tuple[str, ...]) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        for path, text in ((self.key_path, f"{key:x}\n"),
                           (self.dev_path, "".join(f"{d}\n" for d in devices))):
            tmp = f"{path}.{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)

    def own_key(self) -> int | None:
        for path in (self.key_path, *UPSTREAM_KEY_FILES):
            try:
                with open(path) as f:
                    return int(normalise_key(f.read()), 16)
            except (OSError, GuestfenceError, ValueError):
                continue
        return None

    def devices(self) -> tuple[str, ...]:
        try:
            with open(self.dev_path) as f:
                return tuple(line.strip() for line in f if line.strip())
        except OSError:
            return ()


# ----------------------------------------------------------------------------- devices


def split_devices(text: str) -> tuple[str, ...]:
    return tuple(d for d in text.replace(",", " ").split() if d)


def initiator_name(options: Options) -> str:
    if options.get("initiator_name"):
        return options.get("initiator_name") or ""
    try:
        with open(INITIATOR_FILE) as f:
            for line in f:
                if line.strip().startswith("InitiatorName="):
                    return line.split("=", 1)[1].strip()
    except OSError:
        pass
    return f"iqn.2026-11.org.guestfence:{socket.gethostname()}"


def check_device(device: str) -> None:
    """Refuse a malformed URL or a path that is no SCSI device before any device is touched."""
    if device.startswith("iscsi://"):
        from guestfence.scsi.iscsi import parse_iscsi_url

        parse_iscsi_url(device)  # raises with the expected form
        return
    from guestfence.scsi.sgio import is_block_or_sg

    if not is_block_or_sg(device):
        what = "does not exist" if not os.path.exists(device) else "is not a block device"
        raise AgentFailure(f"Failed: device {device} {what} (expected a block device such as "
                           "/dev/sdb or /dev/mapper/mpatha, or iscsi://host[:port]/iqn/lun)")


def open_device(device: str, options: Options) -> ScsiTransport:
    if device.startswith("iscsi://"):
        from guestfence.scsi.iscsi import IscsiTransport

        name = initiator_name(options)
        # a stable ISID per node: a re-login lands on the same I_T nexus
        return IscsiTransport(device, name, isid_seed=name,
                              connect_timeout=options.connect_timeout)
    from guestfence.scsi.sgio import SgIoTransport

    return SgIoTransport(device)


class ScsiFence:
    """The PowerDevice the generic driver drives: status/on/off in terms of keys."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self._logfile: logging.Handler | None = None
        if options.get("logfile"):  # fence-agents' legacy option: the log goes there too
            try:
                self._logfile = logging.FileHandler(options.get("logfile") or "")
            except OSError as e:
                raise AgentFailure(f"Failed: cannot open logfile {options.get('logfile')}: "
                                   f"{e.strerror}") from None
            self._logfile.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: "
                                                         "%(message)s"))
            root = logging.getLogger("guestfence")
            root.addHandler(self._logfile)
            root.setLevel(min(root.level or logging.INFO, logging.INFO))
        devices = split_devices(options.get("devices") or "")
        if not devices:
            raise AgentFailure("Failed: no devices given (devices=/dev/sdX,... or "
                               "iscsi://host/iqn/lun)")
        for device in devices:
            try:
                check_device(device)
            except ValueError as e:  # IscsiUrlError is a ValueError and a ConfigError
                raise AgentFailure(f"Failed: {e}") from None
        self.state = StateFiles(options.get("state_dir") or DEFAULT_STATE_DIR)
        self.storage = SharedStorage(devices, lambda d: open_device(d, options),
                                     aptpl="aptpl" in options,
                                     preempt_fallback="preempt_fallback" in options)
        self._keys: dict[str, int] = {}

    def key(self, plug: str) -> int:
        if plug not in self._keys:
            self._keys[plug] = node_key(self.options, plug)
        return self._keys[plug]

    def status(self, plug: str) -> str:
        return "on" if self.storage.is_registered(self.key(plug)) else "off"

    def set_power(self, plug: str, state: str) -> None:
        key = self.key(plug)
        if state == "on":
            self.storage.unfence(key)
            self.state.save(key, self.storage.devices)
            return
        own = self.state.own_key()
        if own is None:
            raise AgentFailure(f"Failed: this node has no key in {self.state.key_path}: "
                               "it must be unfenced (action on) before it can fence others")
        for device, outcome in self.storage.fence(own, key).items():
            if outcome.preempted:
                log.info("%s: key %x removed with %s", device, key, outcome.method)

    def monitor(self) -> None:
        self.storage.check_reachable()

    def list(self) -> dict[str, str]:
        """Registered keys, as ``node,key`` where the node can be told, else ``key,``."""
        registered = {k for keys in self.storage.keys().values() for k in keys}
        names = self._names_of(registered)
        return {names.get(k, f"{k:x}"): f"{k:x}" if k in names else ""
                for k in sorted(registered)}

    def _names_of(self, keys: set[int]) -> dict[int, str]:
        """Key -> node name, by deriving every corosync node's key; empty without corosync."""
        try:
            nodelist = _cmapctl(self.options, "nodelist")
        except AgentFailure:
            return {}
        import re

        nodes = re.findall(r"^nodelist\.node\.\d+\.name \(str\) = (.*)$", nodelist,
                           re.MULTILINE)
        out: dict[int, str] = {}
        for node in nodes:
            try:
                key = node_key(self.options, node.strip())
            except (AgentFailure, GuestfenceError):
                continue
            if key in keys:
                out[key] = node.strip()
        return out

    def close(self) -> None:
        if self._logfile is not None:
            logging.getLogger("guestfence").removeHandler(self._logfile)
            self._logfile.close()
            self._logfile = None


def make_device(options: Options) -> ScsiFence:
    return ScsiFence(options)


def main() -> None:
    sys.exit(run_agent(SPEC, make_device))


if __name__ == "__main__":
    main()
