"""The registry of `guestfence check` rules: one entry per support statement of the seed.

The seed is the guest-cluster chapter of Red Hat's virtualization support
document (section 7.2); each rule quotes the sentence it comes from. The rules
live in rules_versions.py (platforms, host releases), rules_guests.py (guest
OS), rules_fencing.py (agents and host daemons), rules_storage.py (fence_scsi
and iSCSI), rules_placement.py (placement, quorum, capacity) and rules_keys.py
(clusters sharing hosts, kept apart by guestfence's per-cluster keys); the decisions
each module took where the seed leaves a choice are in its docstring.

Each entry's comment gives the severity of a violation and what fires it (a
test keeps the severities in the comments true). A rule that lacks an input it
needs says so with an info finding ("could not check ...") instead.

Statements without a rule: mixing bare-metal and virtual members is permitted
(no finding; rules skip members without a host), a host cluster is not
required when every guest uses fence_scsi (the host-cluster rules only look at
clusters using fence_xvm/fence_virt), and the shared-storage technologies of
each platform (iSCSI or native; only fence_scsi restricts them).
"""

from __future__ import annotations

from guestfence.check import rules_fencing as fencing
from guestfence.check import rules_guests as guests
from guestfence.check import rules_keys as keys
from guestfence.check import rules_placement as placement
from guestfence.check import rules_static as static
from guestfence.check import rules_storage as storage
from guestfence.check import rules_versions as versions
from guestfence.check.rules_common import Rule

RULES: tuple[Rule, ...] = (
    # platforms and releases
    versions.HYPERV_UNSUPPORTED,            # error: Hyper-V hosts run members
    versions.HYPERVISOR_MIXED,              # error: one cluster on several hypervisors
    versions.XEN_HOST_VERSION,              # error: Xen host older than RHEL 5.3
    versions.KVM_RHEL5_HOST,                # error: KVM host on RHEL 5
    versions.KVM_HOST_VERSION,              # error: KVM host not RHEL 6.1+
    versions.RHEV_VERSION,                  # error: RHEV-M older than 2.2
    versions.VMWARE_VERSION,                # error: VMware older than 4.1
    versions.VMWARE_VERSION_NEWER,          # warning: VMware newer than 5.0
    # guest OS
    guests.RHEL4_GUEST,                     # error: RHEL 4 members
    guests.XEN_GUEST_VERSION,               # error: Xen members below RHEL 5.3
    guests.KVM_GUEST_VERSION,               # error: KVM members below RHEL 5.6 / 6.1
    guests.RHEV_GUEST_VERSION,              # error: RHEV members below RHEL 5.6 / 6.1
    guests.VMWARE_GUEST_VERSION,            # error: VMware members below RHEL 5.7 / 6.2
    guests.HOMOGENEOUS_GUESTS,              # error: mixed RHEL majors on RHEV / VMware
    guests.HOMOGENEOUS_GUESTS_ADVISED,      # warning: mixed RHEL majors elsewhere
    guests.UPGRADE_PACKAGES,                # info: machines behind others of their major
    # fencing
    fencing.NO_FENCING,                     # error: no fence agent
    fencing.XEN_FENCE_AGENT,                # error: Xen, not fence_xvm / fence_scsi
    fencing.KVM_FENCE_AGENT,                # error: KVM, not fence_xvm / fence_virt / fence_scsi
    fencing.RHEV_FENCE_AGENT,               # error: RHEV, not fence_scsi (/ fence_rhevm on 3.0)
    fencing.VMWARE_FENCE_AGENT,             # error: VMware, not fence_vmware_soap / fence_scsi
    fencing.XEN_HOST_CLUSTER,               # error: fence_xvm on Xen without one host cluster
    fencing.XEN_FENCE_XVM_ALL,              # error: a cluster without fence_xvm next to one with
    fencing.FENCE_VIRTD_MISSING,            # error: KVM host without fence_virtd for fence_xvm
    fencing.FENCE_VIRTD_HOST_CLUSTER,       # error: host-cluster mode without one host cluster
    fencing.FENCE_VIRTD_STATIC,             # info: static mode, no live migration
    static.STATIC_MAP_PLACEMENT,            # error: a guest off its host in guestfenced's map
    fencing.VMWARE_50_SOAP,                 # warning: fence_vmware_soap on vSphere 5.0
    fencing.VMWARE_PERL_API,                # info: fence_vmware_soap needs VMware's perl APIs
    # fence_scsi and storage
    storage.SCSI_NO_STORAGE,                # error: fence_scsi with no storage
    storage.SCSI_ISCSI_ONLY,                # error: fence_scsi with native storage
    storage.SCSI_RHEL_TARGET,               # error: fence_scsi on RHEL's own iSCSI server
    storage.SCSI_PR,                        # error: target lacks SCSI-3 PR / PREEMPT AND ABORT
    storage.SCSI_PR_UNKNOWN,                # warning: target's PR support not stated
    # placement, quorum, capacity
    placement.SINGLE_HOST,                  # error: all members on one host
    placement.HOST_LOSS_QUORUM,             # error: one host loss takes the majority
    placement.TWO_NODE_QUORUM,              # info: two-node cluster needs two_node / qdevice
    placement.ONE_TO_ONE,                   # warning: several members on one host
    placement.SHARED_HOSTS_XVM,             # error: fence_xvm clusters sharing hosts
    keys.SHARED_HOSTS_KEYS,                 # info: ... kept apart by per-cluster keys
    placement.NONCLUSTERED_GUESTS_FENCED,   # warning: other guests on host-cluster hosts
    placement.OVERCOMMIT_MEMORY,            # warning: guests' memory above the host's
    placement.OVERCOMMIT_VCPU,              # warning: guests' vCPUs above the host's CPUs
)

RULES_BY_ID: dict[str, Rule] = {r.id: r for r in RULES}

__all__ = ["RULES", "RULES_BY_ID", "Rule"]
