"""The hand-written parts of guestfenced(8) and guestfence(1), in roff.

Options and sub-commands are not here: `manpages` renders them from the
argparse parsers the programs run with, so they cannot drift from the code.
What stays hand-written is what no parser knows: what the program is for,
the configuration file, files, exit status.
"""

from __future__ import annotations

GUESTFENCED_NAME = "host daemon answering fence_xvm and fence_virt requests"

GUESTFENCED_DESCRIPTION = r""".B guestfenced
runs on the hosts of a guest cluster and powers guests off, on or through a
reboot when a guest's fence agent
.RB ( fence_xvm ", " fence_virt )
asks it to. It reads the
.B fence_virt.conf
format of
.BR fence_virtd (8)
and speaks its wire protocol, so guests with the C agents and hosts with the
C daemon can be mixed.
.PP
It answers \fBsuccess\fR to \fBoff\fR only once libvirt shows the domain shut
off. A domain the host does not have is never reported as off: on TCP, vsock
and serial listeners the answer is a failure; on the multicast listener the
daemon stays silent, so that with several hosts on one group only the host
that runs the domain answers.
.PP
Every request is served on its own; a slow, silent or unreachable requester
never delays another. Each request is logged on one line with the listener,
requester, target, action, sequence number, outcome and duration. Keys are
never logged.
.PP
.B guestfenced \-\-configure
asks for the settings (the role of
.BR "fence_virtd \-c" ),
proposing what it finds on the host: the existing file's values, else
\fBvirbr0\fR or the default-route interface, \fIqemu:///system\fR, and
\fI/etc/cluster/fence_xvm.key\fR. A wrong answer is explained and asked again;
the result is shown and written only when confirmed, atomically, with the old
file kept as \fIFILE\fB.bak\fR. Every block it does not ask about (groups,
keys, ...) is kept; comments are not."""

GUESTFENCED_SECTIONS = (
    ("CONFIGURATION", r"""The grammar and keys are those of
.BR fence_virt.conf (5):
.PP
.nf
fence_virtd { listener = "multicast"; backend = "libvirt"; }
listeners {
        multicast {
                key_file = "/etc/cluster/fence_xvm.key";
                interface = "virbr0";
        }
}
backends { libvirt { uri = "qemu:///system"; } }
groups {
        group { ip = "192.168.122.11"; uuid = "node1"; uuid = "node2"; }
}
.fi
.PP
Listeners: \fBmulticast\fR (fence_xvm; keys key_file, hash, auth, family,
address, port, interface), \fBtcp\fR (fence_virt \-T; key_file, hash, auth,
family, address, port), \fBvsock\fR (fence_virt \-S; key_file, hash, auth,
port), \fBserial\fR (fence_virt \-D; uri, path, mode serial|vmchannel).
\fBhash\fR is the weakest request signature accepted, \fBauth\fR the
challenge/response algorithm; both default to sha256.
Backend: \fBlibvirt\fR with \fBuri\fR, \fBuri1\fR, ... (any libvirt URI,
including \fItest:///path/node.xml\fR) and \fBclaim_shut_off\fR (yes/no,
default yes): with \fBno\fR, a domain that is only defined and shut off here
does not make this host answer on the multicast group. Set it to \fBno\fR when
several hosts share a group, so that a host which kept the definition of a
migrated domain does not answer "off" while the domain runs elsewhere.
\fBgroups\fR restrict which requester (IP address, vsock CID, or the VM's UUID
for serial requests) may act on which domains (by name or UUID).
.PP
Errors name the file, the line and what was expected. Unlike fence_virtd, the
\fBauth\fR key of the tcp and vsock listeners sets the challenge/response
algorithm (fence_virtd stores it into \fBhash\fR)."""),
    ("SEVERAL GUEST CLUSTERS ON THE SAME HOSTS", r"""With one key, every guest
holding it can fence and list every VM of the host. A \fBclusters\fR block
gives each guest cluster its own key, bound to its own guests; nothing changes
on the wire, so the guests keep the C or our fence_xvm / fence_virt:
.PP
.nf
clusters {
        web {
                key_file = "/etc/guestfence/keys/web.key";
                guests = "web1 web2";       # domain names, exactly
                uuids = "...";              # domain UUIDs
                pattern = "web\-*";          # fnmatch patterns on names
                tag = "web";                # domain metadata, below
                # successor_key_file = "..."; default key_file + ".next"
        }
        db { key_file = "/etc/guestfence/keys/db.key"; pattern = "db*"; }
}
.fi
.PP
The key that verifies a request's signature names the cluster; the
challenge/response then uses that key. A cluster may act on a guest that one
of its bindings matches; anything else is answered with permission denied
(fence_xvm exits 3), and \fBlist\fR shows a cluster only its own guests. The
\fBtag\fR binding reads
\fB<guestfence:cluster xmlns:guestfence="https://guestfence.dev/xmlns/1"
name="web"/>\fR from the domain's \fB<metadata>\fR through libvirt. Serial
requests carry no key: their cluster is the one whose bindings match the
requesting guest. With a clusters block the listener's \fBkey_file\fR is not
used and \fBhash\fR must not be none; \fBgroups\fR still apply on top.
Unknown keys, a cluster that binds nothing, a pattern matching everything,
two clusters sharing a key file or key are errors.
.PP
Rotation without downtime: \fBguestfence keys rotate\fR \fIKEY_FILE\fR
writes the successor; both keys work; copy it to the guests (compare the
fingerprint with \fBsha256sum\fR there); \fBguestfence keys retire\fR
\fIKEY_FILE\fR renames it over the key. guestfenced checks its key files
twice a second and reloads them on SIGHUP, so a retired key stops working
within a second, without a restart. Keys are never logged, their
fingerprints are (the first 16 hex digits of the key's SHA\-256)."""),
    ("LIVE MIGRATION: THREE HOST MODES", r"""A \fBlibvirt\fR backend answers
for the guests of its own libvirt only. When guests live-migrate between hosts
that share a multicast group, choose one of three tracked backends; in each,
exactly one daemon answers a request, success still means "verified off", and
a guest whose host cannot be reached fails instead of being reported off.
.TP
.B backend = \(dqstatic\(dq
A host \-> guests map, the same on every host, in
\fBbackends { static { uri; host_name; map { HOST = "GUEST ..."; } } }\fR.
A daemon executes only for the guests the map gives its host and its libvirt
shows. A guest on the wrong host, or migrated in or out, is a WARNING line, a
count in the metrics, and a failure for its requests; \fBguestfence check
\-\-fence\-virt\-conf\fR reports it too.
.TP
.B backend = \(dqcpg\(dq
A corosync host cluster: \fBbackends { cpg { uri; host_name; group;
fenced_confirm; confirm_command; } }\fR. Every guestfenced joins the CPG group
(default \fBguestfence\fR; not the C backend's) and announces its guests on
join, membership changes and libvirt lifecycle events; the owner executes.
When the owner host leaves the membership, the member with the lowest host
name answers failure until the host cluster confirms it fenced that host
after it left (\fBstonith_admin \-\-history HOST \-\-verbose\fR, or the
confirm command). Only a host of a quorate partition answers for other hosts'
guests. guestfenced must share corosync's network and mount namespaces.
.TP
.B backend = \(dqmulti\-libvirt\(dq
No host cluster: \fBbackends { multi\-libvirt { host_name; hosts { HOST =
"URI"; } } }\fR. The daemon keeps a libvirt connection to every host, follows
their lifecycle events and acts through the connection of the host the guest
runs on. A host it cannot reach makes the answer a failure, never "off".
Without \fBhost_name\fR one management daemon answers for all hosts.
.PP
Ownership moves when the migration's destination resumes the guest (or the
source stops with "migrated"), not when the destination's qemu starts; an
\fBoff\fR that races a migration answers success only when no copy is left."""),
    ("SYSTEMD", r"""The unit \fIguestfenced.service\fR (in the source tree's
\fIdist/systemd\fR) runs \fBguestfenced \-F \-w\fR with \fBType=notify\fR:
the daemon tells systemd when its listener serves. With \fB\-w\fR a backend or
listener that is not ready yet (libvirtd still starting) is retried every 5
seconds instead of failing; the unit counts as started meanwhile, and
\fBsystemctl status guestfenced\fR shows what it waits for.
\fBsystemctl reload guestfenced\fR sends SIGHUP. For the cpg backend, install
the drop-in \fIcpg.conf\fR so that corosync is started first."""),
    ("FILES", r""".TP
.I /etc/fence_virt.conf
Default configuration file; \fBguestfenced \-\-configure\fR writes it.
.TP
.I /etc/cluster/fence_xvm.key
Default shared key: the first 4096 bytes are used. It must be a regular file
of mode 0600, owned by root (or by guestfenced's user); guestfenced refuses to
start otherwise (it does not change the mode itself), and a key that stops
being so while it runs stops working. Create one with \fBguestfence keygen\fR.
.TP
.I /run/guestfenced/
PID file and sockets when run by systemd."""),
    ("EXIT STATUS",
     r"""0 after SIGTERM or SIGINT (requests in flight are finished first, for up to 20
seconds); 1 when start-up fails, with one line on standard error saying why.
\fB\-\-configure\fR: 0 when the file was written, 1 when it was not."""),
    ("SEE ALSO", r""".BR guestfence (1),
.BR fence_xvm (8),
.BR fence_virt (8),
.BR fence_virtd (8),
.BR fence_virt.conf (5)"""),
)

GUESTFENCE_NAME = "fencing toolkit for clusters of virtual machines"

GUESTFENCE_DESCRIPTION = r""".B guestfence
gathers the operator commands of the toolkit whose daemon is
.BR guestfenced (8)
and whose agents are
.BR fence_xvm (8),
.BR fence_virt (8)
and
.BR fence_scsi (8).
Each command below has its own options; \fBguestfence\fR \fICOMMAND\fR
\fB\-\-help\fR prints them too."""

GUESTFENCE_SECTIONS = (
    ("EXIT STATUS",
     r"""\fBcheck\fR: 0 supportable, 1 findings of severity error, 2 the input could not
be read (the message names the file, line and field). Other commands: 0 on
success, 1 on failure with a message on standard error, 2 on a usage error."""),
    ("SEE ALSO", r""".BR guestfenced (8),
.BR fence_xvm (8),
.BR fence_virt (8),
.BR fence_scsi (8)"""),
)
