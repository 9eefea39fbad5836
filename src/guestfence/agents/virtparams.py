"""The parameters of fence_xvm and fence_virt, as the C clients (fence-agents 4.12.1) define them.

Order, getopt letters, defaults and descriptions are those of the C clients so
that help and metadata match theirs; the tests compare our metadata with the
C agents' output.
"""

from __future__ import annotations

from guestfence.agent.params import Param, help_text
from guestfence.virt.wire import DEFAULT_KEY_FILE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from guestfence.agent.metadata import AgentMetadata

_HASH_DESC = "(none, sha1, [sha256], sha512)"
_DOMAIN_DESC = "Virtual Machine (domain name) to fence"

DEBUG = Param(
    "debug",
    "Specify (stdin) or increment (command line) debug level",
    short="d",
    arity="none",
    content="boolean",
    repeat_counts=True,
)
IPPORT = Param(
    "ipport",
    "TCP, Multicast, VMChannel, or VM socket port (default=1229)",
    short="p",
    default="1229",
    metavar="port",
)
AUTH = Param("auth", f"Authentication {_HASH_DESC}", short="C", default="sha256", metavar="auth")
HASH = Param("hash", f"Packet hash strength {_HASH_DESC}", short="c", default="sha256",
             metavar="hash")
KEY_FILE = Param(
    "key_file",
    f"Shared key file (default={DEFAULT_KEY_FILE})",
    short="k",
    default=DEFAULT_KEY_FILE,
    metavar="file",
)
PLUG = Param("plug", _DOMAIN_DESC, short="n", metavar="domain", meta_required=True,
             obsoletes="port")
PORT = Param("port", _DOMAIN_DESC, short="H", metavar="domain", in_help=False,
             meta_required=True)
DOMAIN = Param("domain", f"{_DOMAIN_DESC} (deprecated; use port)", in_help=False,
               aliases=())
ACTION = Param(
    "action",
    "Fencing action (null, off, on, [reboot], status, list, list-status, monitor, "
    "validate-all, metadata)",
    short="o",
    default="reboot",
    metavar="operation",
    aliases=("option",),
)
TIMEOUT = Param("timeout", "Fencing timeout (in seconds; default=30)", short="t", default="30",
                metavar="timeout")
DELAY = Param("delay", "Fencing delay (in seconds; default=0)", short="w", default="0",
              metavar="delay")

XVM_PARAMS = (
    DEBUG,
    Param("ip_family", "IP Family ([auto], ipv4, ipv6)", short="i", default="auto",
          metavar="family"),
    Param("multicast_address", "Multicast address (default=225.0.0.12 / ff05::3:1)",
          short="a", metavar="address"),
    IPPORT,
    Param("retrans", "Multicast retransmit time (in 1/10sec; default=20)", short="r",
          default="20", metavar="retrans"),
    AUTH,
    HASH,
    KEY_FILE,
    PLUG,
    PORT,
    Param(
        "use_uuid",
        "Treat [domain] as UUID instead of domain name. This is provided for compatibility "
        "with older fence_xvmd installations.",
        short="u",
        arity="none",
        default="0",
    ),
    ACTION,
    TIMEOUT,
    DELAY,
    DOMAIN,
)

VIRT_PARAMS = (
    DEBUG,
    Param("serial_device", "Serial device (default=/dev/ttyS1)", short="D",
          meta_default="/dev/ttyS1", metavar="device"),
    Param("serial_params", "Serial Parameters (default=115200,8N1)", short="P",
          default="115200,8N1", metavar="param"),
    Param("channel_address", "VM Channel IP address (default=10.0.2.179)", short="A",
          default="10.0.2.179", metavar="address"),
    IPPORT,
    PLUG,
    PORT,
    ACTION,
    TIMEOUT,
    Param("ipaddr", "IP address to connect to in TCP mode (default=127.0.0.1 / ::1)",
          short="T", meta_default="127.0.0.1", metavar="address"),
    Param("vsock", "vm socket CID to connect to in vsock mode", short="S", arity="optional",
          implicit="2", content="integer", meta_default="2", metavar="cid"),
    AUTH,
    HASH,
    KEY_FILE,
    DELAY,
    DOMAIN,
)

ACTIONS = ("null", "on", "off", "reboot", "metadata", "status", "monitor", "list",
           "list-status", "validate-all", "manpage")
NOTE = "NOTE: reboot-action does not power on nodes that are powered off."

# Where -?, -h and -V appear in the C usage text (after -t for fence_xvm; after -t for fence_virt).
_SPECIAL_FLAGS = (("-?", "Help (alternate)"), ("-h", "Help"), ("-V", "Display version and exit"))


def usage(prog: str, params: tuple[Param, ...]) -> str:
    shown = [p for p in params if p.in_help and p.short]
    position = next(i for i, p in enumerate(shown) if p.name == "timeout") + 1
    specials = [(position + i, flag, desc) for i, (flag, desc) in enumerate(_SPECIAL_FLAGS)]
    return help_text(prog, NOTE, params, specials)


def metadata(prog: str, params: tuple[Param, ...]) -> AgentMetadata:
    from guestfence.agent.metadata import AgentMetadata, MetaAction, MetaParam

    meta_params = []
    for p in params:
        required = p.meta_required if p.meta_required is not None else False
        default = p.meta_default if p.meta_default is not None else p.default
        if p.name in ("port", "domain"):
            default = None
        meta_params.append(
            MetaParam(
                name=p.name,
                getopt=f"-{p.short}" if p.short else "",
                shortdesc=p.shortdesc,
                content=p.content if p.content in ("boolean", "integer") else "string",
                default=None if p.content == "boolean" else default,
                required=required,
                deprecated=p.name in ("port", "domain"),
                obsoletes=p.obsoletes,
            )
        )
    return AgentMetadata(
        name=prog,
        shortdesc="Fence agent for virtual machines",
        longdesc=f"{prog} is an I/O Fencing agent which can be used with virtual machines."
        f"\n\n{NOTE}",
        vendor_url="https://libvirt.org",
        params=meta_params,
        actions=[MetaAction(a) for a in ACTIONS],
    )
