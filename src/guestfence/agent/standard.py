"""The fence-agents standard options, the agent description, and input validation.

Every Python agent of fence-agents shares one option table (spec §1.3). Here it
is a list of :class:`Param` objects: the internal key is ``Param.name`` (what
Pacemaker historically sent, e.g. ``ipaddr``) and the GNU long option is
``Param.long`` (``ip``). ParamTable accepts both spellings on stdin, with ``-``
and ``_`` equivalent, so the alias pairs of §1.2 come for free.

An agent describes itself with an :class:`AgentSpec`; :func:`agent_params`
turns that into the full option list (standard options, opt-in groups, its own
options), :class:`AgentParamTable` parses argv or stdin, :func:`validate` turns
the parsed values into :class:`Options`, and :class:`RunLogging` gives quiet,
verbose and debug_file their meaning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TextIO

from guestfence.agent.params import Param, ParamTable, ParsedInput, UsageError, normalise_name
from guestfence.errors import ConfigError

LOG_FORMAT = "%(asctime)s %(levelname)s: %(message)s"
TRUE_WORDS = ("1", "yes", "on", "true")
FALSE_WORDS = ("0", "no", "off", "false")


def _flag(name: str, short: str | None, desc: str, repeat_counts: bool = False) -> Param:
    return Param(name, desc, short=short, long=name.replace("_", "-"), arity="none",
                 content="boolean", repeat_counts=repeat_counts)


def _seconds(name: str, default: str, desc: str) -> Param:
    return Param(name, desc, long=name.replace("_", "-"), default=default, content="second",
                 metavar="seconds")


# --- options every agent gets (§1.3) -------------------------------------------------
ACTION = Param("action", "Fencing action", short="o", long="action", default="reboot",
               metavar="action", meta_required=True, aliases=("option",))
QUIET = _flag("quiet", "q", "Disable logging to stderr. Does not affect --verbose or "
              "--debug-file.")
VERBOSE = _flag("verbose", "v", "Verbose mode. Multiple -v flags can be stacked on the "
                "command line (e.g., -vvv) to increase verbosity.", repeat_counts=True)
VERBOSE_LEVEL = Param("verbose_level", "Level of debugging detail in output. Defaults to the "
                      "number of --verbose flags specified on the command line, or to 1 if "
                      "verbose=1 in a stonith device configuration (i.e., on stdin).",
                      long="verbose-level", content="integer", metavar="level")
DEBUG = Param("debug", "Write debug information to given file", short="D", long="debug-file",
              metavar="debugfile")
VERSION = _flag("version", "V", "Display version information and exit")
HELP = _flag("help", "h", "Display help and exit")
PLUG_SEPARATOR = Param("plug_separator", "Separator for plug parameter when specifying more "
                       "than 1 plug", long="plug-separator", default=",", metavar="char")
DELAY = _seconds("delay", "0", "Wait X seconds before fencing is started")
DISABLE_TIMEOUT = Param("disable_timeout", "Disable timeout (true/false) (default: true when "
                        "run from Pacemaker 2.0+)", long="disable-timeout",
                        metavar="true/false")
LOGIN_TIMEOUT = _seconds("login_timeout", "5", "Wait X seconds for cmd prompt after login")
POWER_TIMEOUT = _seconds("power_timeout", "20", "Test X seconds for status change after ON/OFF")
POWER_WAIT = _seconds("power_wait", "0", "Wait X seconds after issuing ON/OFF")
SHELL_TIMEOUT = _seconds("shell_timeout", "3",
                         "Wait X seconds for cmd prompt after issuing command")
STONITH_STATUS_SLEEP = _seconds("stonith_status_sleep", "1",
                                "Sleep X seconds between status calls during a STONITH action")
RETRY_ON = Param("retry_on", "Count of attempts to retry power on", long="retry-on",
                 default="1", content="integer", metavar="attempts")

# --- opt-in groups ------------------------------------------------------------------
IPADDR = Param("ipaddr", "IP address or hostname of fencing device", short="a", long="ip",
               required=True, metavar="ip")
IPPORT = Param("ipport", "TCP/UDP port to use for connection with device", short="u",
               long="ipport", content="integer", metavar="port")
LOGIN = Param("login", "Login name", short="l", long="username", required=True,
              metavar="name")
PASSWD = Param("passwd", "Login password or passphrase", short="p", long="password",
               metavar="password")
PASSWD_SCRIPT = Param("passwd_script", "Script to run to retrieve password", short="S",
                      long="password-script", metavar="script")
SSL = _flag("ssl", "z", "Use SSL connection with verifying certificate")
SSL_SECURE = _flag("ssl_secure", None, "Use SSL connection with verifying certificate")
SSL_INSECURE = _flag("ssl_insecure", None, "Use SSL connection without verifying certificate")
PORT = Param("port", "Physical plug number on device, UUID or identification of machine",
             short="n", long="plug", metavar="id", meta_required=True)
SEPARATOR = Param("separator", "Separator for CSV created by 'list' operation", short="C",
                  long="separator", default=",", metavar="char")
METHOD = Param("method", "Method to fence", short="m", long="method", default="onoff",
               content="select", choices=("onoff", "cycle"), metavar="method")

LIST_ACTIONS = ("list", "list-status")
NO_PLUG_ACTIONS = ("list", "list-status", "monitor", "validate-all")
# validate-all also runs without a plug: Pacemaker validates the configured
# parameters, and the plug is only supplied per target at fencing time.


@dataclass(frozen=True)
class AgentSpec:
    """What an agent is and which standard option groups and behaviours it uses."""

    name: str
    shortdesc: str
    longdesc: str = ""
    vendor_url: str = ""
    params: tuple[Param, ...] = ()  # agent-specific; long-only by convention
    symlinks: tuple[tuple[str, str], ...] = ()  # (name, shortdesc)
    # opt-in groups
    ipaddr: bool = False
    ipport: int | None = None  # default port (metadata); ssl_ipport applies when ssl is on
    ssl_ipport: int = 443
    login: bool = False
    passwd: bool = False
    password_required: bool = True
    ssl: bool = False
    has_plug: bool = False  # also adds separator
    has_list: bool = False  # list and list-status (only with has_plug)
    method: bool = False  # method=onoff|cycle; cycle needs device.reboot_cycle
    # behaviour
    fabric: bool = False  # no reboot; default action off; on automatic="1"; enable/disable
    force_on: bool = False  # "on" is always carried out, even when already on
    # "off" is always carried out: for fence_scsi "key not registered" is not "cut off"
    # (the reservation may be gone too), so the verified fence must run every time
    force_off: bool = False
    on_target: bool | None = None  # on_target="1" on the on action; default: same as fabric
    defaults: Mapping[str, str] = field(default_factory=dict)  # e.g. {"power_wait": "1"}
    plug_desc: str | None = None  # shortdesc of plug/port
    shorts: Mapping[str, str] = field(default_factory=dict)  # e.g. {"delay": "H"} (fence_scsi)
    # an option that names the plug ahead of plug/port (fence_scsi: nodename), and
    # options that make a plug unnecessary (fence_scsi: key)
    plug_override: str | None = None
    plug_optional_with: tuple[str, ...] = ()
    # plugs are names that may contain the separator (VM names may hold a comma): split
    # "a,b" into several plugs only when plug_separator is given explicitly
    plugs_are_names: bool = False
    validate: Callable[[Options], None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        params = agent_params(self)  # raises on duplicate names or letters
        unknown = set(self.defaults) - {p.name for p in params}
        if unknown:
            raise ValueError(f"{self.name}: defaults for unknown options {sorted(unknown)}")

    @property
    def lists(self) -> bool:
        return self.has_plug and self.has_list

    def actions(self) -> tuple[str, ...]:
        """Supported actions in metadata order (on first; §1.11)."""
        acts = ["on", "off"] + ([] if self.fabric else ["reboot"]) + ["status"]
        acts += list(LIST_ACTIONS) if self.lists else []
        return (*acts, "monitor", "metadata", "manpage", "validate-all")


def agent_params(spec: AgentSpec) -> tuple[Param, ...]:
    """Every option of an agent: standard, opt-in groups, then its own."""
    params = [ACTION._replace(default="off" if spec.fabric else "reboot")]
    if spec.ipaddr:
        port = str(spec.ipport) if spec.ipport is not None else None
        params += [IPADDR, IPPORT._replace(default=port)]
    params += [LOGIN] if spec.login else []
    params += [PASSWD, PASSWD_SCRIPT] if spec.passwd else []
    params += [SSL, SSL_SECURE, SSL_INSECURE] if spec.ssl else []
    if spec.has_plug:
        params += [PORT._replace(shortdesc=spec.plug_desc or PORT.shortdesc), SEPARATOR]
    params += [METHOD] if spec.method else []
    params += [QUIET, VERBOSE, VERBOSE_LEVEL, DEBUG, VERSION, HELP, PLUG_SEPARATOR, DELAY,
               DISABLE_TIMEOUT, LOGIN_TIMEOUT, POWER_TIMEOUT, POWER_WAIT, SHELL_TIMEOUT,
               STONITH_STATUS_SLEEP, RETRY_ON]
    # agent options without a long form still get one, so that argv can reach them
    params += [p if p.long else p._replace(long=p.name.replace("_", "-")) for p in spec.params]
    params = [p._replace(default=spec.defaults.get(p.name, p.default),
                         short=spec.shorts.get(p.name, p.short)) for p in params]
    seen: set[str] = set()
    for p in params:
        keys = {normalise_name(n) for n in p.stdin_names()} | {f"-{p.short}" if p.short else ""}
        clash = (keys - {""}) & seen
        if clash:
            raise ValueError(f"{spec.name}: option {p.name} reuses {sorted(clash)}")
        seen |= keys - {""}
    return tuple(params)


# --- from input to Options -------------------------------------------------------


class AgentParamTable(ParamTable):
    """On stdin, an unusable value (a flag that is not 1/yes/on/true or 0/no/off/false,
    an empty value for an option that needs one) is ignored with a warning, as
    fence-agents does, instead of failing the run: the fencer's input is not
    interactive, and validation still reports what is then missing."""

    def _store(self, parsed: ParsedInput, param: Param, value: str | None, origin: str) -> None:
        try:
            super()._store(parsed, param, value, origin)
        except UsageError:
            if not parsed.from_stdin:
                raise
            reason = ("does not have value 1/yes/on/true or 0/no/off/false"
                      if param.content == "boolean" else "has no value")
            parsed.warnings.append(f"Parse error: Ignoring option '{param.name}' because it "
                                   f"{reason}")


def verbose_level(values: Mapping[str, str]) -> int:
    """verbose_level wins; else the -v count (argv) or verbose=<flag or number> (stdin)."""
    for name in ("verbose_level", "verbose"):
        raw = values.get(name, "").strip().lower()
        if raw.isdigit():
            return int(raw)
        if raw in TRUE_WORDS:
            return 1
    return 0


def apply_defaults(spec: AgentSpec, given: Mapping[str, str]) -> dict[str, str]:
    """Defaults plus given values, with false-like flags removed.

    Deliberate difference from fence-agents (§1.2): there ``ssl_insecure=0``
    is stored and then counts as set. Here a false flag is simply absent.
    """
    params = agent_params(spec)
    values = {p.name: p.default for p in params if p.default is not None}
    values.update(given)
    for p in params:
        if p.content == "boolean" and values.get(p.name, "").lower() in FALSE_WORDS:
            del values[p.name]
    return values


def normalise_action(spec: AgentSpec, raw: str) -> str:
    action = raw.strip().lower()
    action = {"meta-data": "metadata"}.get(action, action)
    if spec.fabric:
        action = {"enable": "on", "disable": "off"}.get(action, action)
    if action not in spec.actions():
        raise UsageError(f"Failed: Unrecognised action '{raw}'")
    return action


class RunLogging:
    """What quiet, verbose and debug_file mean (§1.6): handlers on the "guestfence"
    logger for one run (so agents' module loggers are included), removed afterwards."""

    def __init__(self, stream: TextIO) -> None:
        self.logger = logging.getLogger("guestfence")
        self.saved = (self.logger.level, self.logger.propagate)
        self.formatter = logging.Formatter(LOG_FORMAT)
        self.stderr = logging.StreamHandler(stream)
        self.stderr.setFormatter(self.formatter)
        self.stderr.setLevel(logging.WARNING)
        self.handlers: list[logging.Handler] = [self.stderr]
        self.logger.addHandler(self.stderr)
        self.logger.setLevel(logging.WARNING)
        self.logger.propagate = False  # exactly one "<time> <LEVEL>: <msg>" line on stderr

    def configure(self, values: Mapping[str, str]) -> None:
        level = verbose_level(values)
        if "quiet" in values:
            self.logger.removeHandler(self.stderr)
        elif level > 0:
            self.stderr.setLevel(logging.DEBUG)
        if "debug" in values:
            try:
                handler = logging.FileHandler(values["debug"])
            except OSError as e:
                self.logger.error("Unable to create file %s: %s", values["debug"], e.strerror)
            else:
                handler.setFormatter(self.formatter)
                self.handlers.append(handler)
                self.logger.addHandler(handler)
        if level > 0 or "debug" in values:
            self.logger.setLevel(logging.DEBUG)

    def close(self) -> None:
        for handler in self.handlers:
            self.logger.removeHandler(handler)
            handler.close()
        self.logger.setLevel(self.saved[0])
        self.logger.propagate = self.saved[1]


REQUIRED_MESSAGES = {"ipaddr": "You have to enter fence address",
                     "login": "You have to set login name"}


def validate(spec: AgentSpec, given: Mapping[str, str], action: str,
             environ: Mapping[str, str]) -> Options:
    """The checks of §1.4 on the parsed input; raises UsageError("Failed: ...")."""
    vals = apply_defaults(spec, given)
    for p in agent_params(spec):
        value = vals.get(p.name)
        if value is None:
            if p.required:
                what = REQUIRED_MESSAGES.get(p.name, f"You have to set {p.name} (--{p.long})")
                raise UsageError(f"Failed: {what}")
            continue
        if p.choices:
            match = [c for c in p.choices if c.lower() == value.strip().lower()]
            if not match:
                raise UsageError(f"Failed: You have to enter a valid choice for --{p.long} "
                                 f"from the valid values: {', '.join(p.choices)}")
            vals[p.name] = match[0]
        elif p.content in ("integer", "second"):
            # non-negative only: a negative delay or timeout is always a typo
            if not value.strip().isdigit():
                kind = "time in seconds" if p.content == "second" else "non-negative integer"
                raise UsageError(f"Failed: The value you have entered for --{p.long} is not "
                                 f"a valid {kind}")
            vals[p.name] = str(int(value))
    if "ipport" in vals and not 0 < int(vals["ipport"]) < 65536:
        raise UsageError("Failed: The value you have entered for --ipport is not a valid port")
    if spec.passwd and spec.password_required and not ({"passwd", "passwd_script"} & set(vals)):
        raise UsageError("Failed: You have to enter password or password script")
    if "ssl_secure" in vals and "ssl_insecure" in vals:
        raise UsageError("Failed: ssl_secure and ssl_insecure cannot be used together")
    if spec.ipaddr and "ipport" not in given and Options(action, vals).ssl:
        vals["ipport"] = str(spec.ssl_ipport)
    if not vals.get("plug_separator"):
        raise UsageError("Failed: plug_separator must not be empty")
    plugs: tuple[str, ...] = ()
    named = vals.get(spec.plug_override or "") or vals.get("port")
    if spec.has_plug and named:
        if spec.plugs_are_names and "plug_separator" not in given:
            plugs = (named.strip(),)
        else:
            pieces = (s.strip() for s in named.split(vals["plug_separator"]))
            plugs = tuple(s for s in pieces if s)
    if spec.has_plug and not plugs and any(vals.get(n) for n in spec.plug_optional_with):
        plugs = ("",)  # the agent works from that option instead of a plug
    if spec.has_plug and not plugs and action not in NO_PLUG_ACTIONS:
        raise UsageError("Failed: You have to enter plug number or machine identification")
    _apply_disable_timeout(vals, environ)
    options = Options(action, vals, plugs)
    if spec.validate is not None:
        try:
            spec.validate(options)
        except ConfigError as e:
            text = str(e)
            raise UsageError(text if text.startswith("Failed:") else f"Failed: {text}") from None
    return options


def _apply_disable_timeout(vals: dict[str, str], environ: Mapping[str, str]) -> None:
    """§1.9: under the Pacemaker 2.x fencer, Pacemaker's own action timeout governs."""
    raw = vals.get("disable_timeout")
    if raw is None:
        disabled = environ.get("PCMK_service") == "pacemaker-fenced"
    elif raw.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        disabled = raw.strip().lower() in TRUE_WORDS
    else:
        raise UsageError("Failed: The value you have entered for --disable-timeout is not "
                         "true or false")
    if disabled:
        for name in ("login_timeout", "shell_timeout", "power_timeout"):
            vals[name] = "0"


# Connect timeout used when login_timeout is 0 (disabled): shorter than Pacemaker's
# default 20 s monitor timeout, so an unreachable device fails instead of hanging (§6.5).
CONNECT_TIMEOUT_CAP = 15


@dataclass(frozen=True)
class Options:
    """Validated input, as handed to the agent's device factory.

    ``values`` holds every set option by internal key (defaults applied,
    false flags removed, numbers canonical). ``plugs`` is the plug value split
    on plug_separator. Timeouts of 0 mean "no limit".
    """

    action: str
    values: Mapping[str, str]
    plugs: tuple[str, ...] = ()

    def __contains__(self, name: object) -> bool:
        return name in self.values

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.values.get(name, default)

    def number(self, name: str) -> int:
        return int(self.values[name])

    @property
    def ipaddr(self) -> str:
        return self.values.get("ipaddr", "")

    @property
    def ipport(self) -> int | None:
        return self.number("ipport") if "ipport" in self.values else None

    @property
    def login(self) -> str:
        return self.values.get("login", "")

    @property
    def ssl(self) -> bool:
        return bool({"ssl", "ssl_secure", "ssl_insecure"} & set(self.values))

    @property
    def ssl_verify(self) -> bool:
        return "ssl_insecure" not in self.values

    @property
    def separator(self) -> str:
        return self.values.get("separator", ",")

    @property
    def connect_timeout(self) -> float:
        return float(self.number("login_timeout") or CONNECT_TIMEOUT_CAP)

    @cached_property
    def password(self) -> str | None:
        """passwd, or the output of passwd_script (run through the shell once)."""
        if "passwd" in self.values or "passwd_script" not in self.values:
            return self.values.get("passwd")
        import subprocess

        script = self.values["passwd_script"]
        done = subprocess.run(script, shell=True, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ConfigError(f"Password script '{script}' failed with exit code "
                              f"{done.returncode}")
        return done.stdout.rstrip()

    def uuid_of(self, plug: str) -> str | None:
        """Canonical lower-case form if the plug is a UUID (§1.7 step 1), else None."""
        import uuid

        try:
            return str(uuid.UUID(plug))
        except ValueError:
            return None
