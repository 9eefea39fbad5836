"""fence_vmware_soap: does finding the VM stay cheap as the vCenter grows? 12 vs 2,000 VMs.

Two govmomi simulators (guestfence.lab.vcsim) on loopback, TLS with
``ssl_insecure`` as in a typical Pacemaker set-up: one with 12 VMs, one with
2,000. Measured: the whole agent process (interpreter start, TLS, login,
lookup, action, logout) for ``status`` and ``off``, with the plug given as
BIOS UUID and as inventory path; the VM is powered on again between ``off``
runs, outside the timing. Ours by name is shown for information (a name needs
a scan of all names).

The reference is fence-agents' fence_vmware_soap design, redone with pyVmomi
in the same run as a process of its own (``--reference``): login, then on
every status the whole inventory through a ContainerView and one
RetrievePropertiesEx of name, summary.runtime.powerState and config.uuid for
all VMs; the plug is resolved in that map (a path through
FindByInventoryPath first); off = status, FindByUuid, PowerOffVM_Task (not
waited on), status again (the simulator finishes the task at once, so one
poll suffices), logout.

Target: ours by UUID and by path at 2,000 VMs within 1.5x of at 12.

    .venv/bin/python bench/vmware_lookup.py
"""

from __future__ import annotations

import argparse
import ssl
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Check, Summary

from guestfence.lab.ourdaemon import venv_tool
from guestfence.lab.vcsim import VcSim

SIZES = {12: 6, 2000: 1000}  # VMs -> VMs per resource pool
ROUNDS = 15
WARMUP = 2
TARGET_VM = "DC0_C0_RP0_VM3"  # exists at both sizes
LIMIT = 1.5


# -- the reference: fence-agents' design with pyVmomi ----------------------------------


def reference(argv: list[str]) -> int:
    """``--reference HOST PORT USER PASSWORD ACTION PLUG``: one upstream-style run."""
    from pyVmomi import vim, vmodl
    from pyVmomi.SoapAdapter import SoapStubAdapter

    host, port, user, password, action, plug = argv
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    stub: Any = SoapStubAdapter(host=host, port=int(port), version="vim.version.version9",
                                sslContext=context, httpConnectionTimeout=15)
    content: Any = vim.ServiceInstance("ServiceInstance", stub).RetrieveContent()
    content.sessionManager.Login(user, password, None)
    pc: Any = vmodl.query.PropertyCollector

    def inventory() -> tuple[dict[str, tuple[str, str]], dict[str, str], dict[str, str]]:
        """upstream get_power_status's query: every VM's name, power state and uuid."""
        view = content.viewManager.CreateContainerView(content.rootFolder,
                                                       [vim.VirtualMachine], True)
        spec = pc.FilterSpec(
            objectSet=[pc.ObjectSpec(obj=view, skip=True, selectSet=[
                pc.TraversalSpec(name="traverseEntities", type=vim.view.ContainerView,
                                 path="view", skip=False)])],
            propSet=[pc.PropertySpec(type=vim.VirtualMachine, all=False,
                                     pathSet=["name", "summary.runtime.powerState",
                                              "config.uuid"])])
        by_name: dict[str, tuple[str, str]] = {}
        by_uuid: dict[str, str] = {}
        by_moid: dict[str, str] = {}  # upstream's mappingToUUID
        result = content.propertyCollector.RetrievePropertiesEx([spec], pc.RetrieveOptions())
        while result is not None:
            for obj in result.objects:
                props = {p.name: p.val for p in obj.propSet}
                if "config.uuid" not in props:
                    continue
                state = str(props["summary.runtime.powerState"])
                by_name[props["name"]] = (props["config.uuid"], state)
                by_uuid[props["config.uuid"]] = state
                by_moid[obj.obj._moId] = props["config.uuid"]
            if not result.token:
                break
            result = content.propertyCollector.ContinueRetrievePropertiesEx(result.token)
        return by_name, by_uuid, by_moid

    def status() -> tuple[str, str]:
        by_name, by_uuid, by_moid = inventory()
        uuid = plug
        if plug.startswith("/"):
            vm = content.searchIndex.FindByInventoryPath(plug)
            uuid = by_moid.get(vm._moId, "") if vm is not None else ""
        elif plug in by_name:
            uuid = by_name[plug][0]
        if uuid not in by_uuid:
            raise SystemExit("Failed: Unable to obtain correct plug status")
        return uuid, "on" if by_uuid[uuid] == "poweredOn" else "off"

    try:
        uuid, state = status()
        if action == "status":
            print(f"Status: {state.upper()}")
            return 0 if state == "on" else 2
        if state == "off":
            print("Success: Already OFF")
            return 0
        vm = content.searchIndex.FindByUuid(None, uuid, True)
        vm.PowerOffVM_Task()
        for _ in range(20):  # the library's poll loop; the simulator is done at once
            if status()[1] == "off":
                print("Success: Powered OFF")
                return 0
            time.sleep(1)
        return 1
    finally:
        content.sessionManager.Logout()


# -- measuring -----------------------------------------------------------------------


def timed(argv: list[str], stdin: str | None, expect: str) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120,
                          check=False)
    took = time.perf_counter() - t0
    if done.stdout != expect:
        raise RuntimeError(f"{argv[-2:]}: expected {expect!r}, got {done.stdout!r} "
                           f"(rc {done.returncode}): {done.stderr}")
    return took


def series(sim: VcSim, impl: str, action: str, plug: str, uuid: str) -> float:
    """Median seconds of ROUNDS whole-process runs (after WARMUP)."""
    expect = "Status: ON\n" if action == "status" else "Success: Powered OFF\n"
    times = []
    for i in range(WARMUP + ROUNDS):
        if action == "off":
            sim.set_power(uuid, "poweredOn")
        if impl == "ours":
            took = timed([venv_tool("fence_vmware_soap")],
                         sim.agent_stdin(action=action, plug=plug), expect)
        else:
            took = timed([sys.executable, __file__, "--reference", sim.host, str(sim.port),
                          sim.username, sim.password, action, plug], None, expect)
        if i >= WARMUP:
            times.append(took)
    sim.set_power(uuid, "poweredOn")
    return statistics.median(times)


def main() -> int:
    summary = Summary("vmware_lookup")
    results: dict[str, dict[str, float]] = {}  # "<impl> <action> by <form>" -> size -> s
    for size, per_pool in SIZES.items():
        with VcSim(per_pool) as sim:
            assert sim.vm_count == size, sim.vm_count
            vm = sim.vm(TARGET_VM)
            plugs = {"uuid": vm.uuid, "path": vm.path, "name": vm.name}
            for action in ("status", "off"):
                for impl, forms in (("ours", ("uuid", "path", "name")),
                                    ("reference", ("uuid", "path"))):
                    for form in forms:
                        key = f"{impl} {action} by {form}"
                        took = series(sim, impl, action, plugs[form], vm.uuid)
                        results.setdefault(key, {})[str(size)] = took
                        print(f"{size:>5} VMs  {key:<28} {took * 1000:7.1f} ms", flush=True)
    for key, by_size in results.items():
        small, large = by_size["12"], by_size["2000"]
        summary.add(f"{key:<28} 12 VMs {small * 1000:7.1f} ms   2,000 VMs "
                    f"{large * 1000:7.1f} ms   ratio {large / small:5.2f}")
    for action in ("status", "off"):
        for form in ("uuid", "path"):
            ours = results[f"ours {action} by {form}"]["2000"]
            ref = results[f"reference {action} by {form}"]["2000"]
            summary.add(f"at 2,000 VMs, {action} by {form}: reference / ours = "
                        f"{ref / ours:.1f}x")
            by_size = results[f"ours {action} by {form}"]
            summary.checks.append(Check(f"ours {action} by {form}, 2,000 / 12 VMs",
                                        by_size["2000"] / by_size["12"], LIMIT, "x"))
    summary.data.update(results=results, rounds=ROUNDS, warmup=WARMUP, target_vm=TARGET_VM,
                        statistic="median seconds per whole process")
    return summary.finish()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--reference":
        sys.exit(reference(sys.argv[2:]))
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    sys.exit(main())
