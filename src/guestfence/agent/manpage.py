"""An agent's self-description: metadata XML, ``-h`` usage text and a roff man page.

The metadata (also what the ``manpage`` action prints) follows fence-agents'
conventions. The man page is rendered from that same AgentMetadata, so it can
never document an option the agent does not have; it also works for
fence_xvm/fence_virt, whose metadata is built elsewhere.

Only loaded for the metadata, manpage and help actions.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import replace

from guestfence.agent.metadata import AgentMetadata, MetaAction, MetaParam
from guestfence.agent.params import Param, normalise_name
from guestfence.agent.standard import AgentSpec, agent_params

ACTION_TEXT = {
    "on": "Power the machine on, or unfence it.",
    "off": "Power the machine off, or cut its access (fence it). The new state is verified.",
    "reboot": "Power off (verified), then power on again. Succeeds once off succeeded.",
    "status": "Print the state of the plug: Status: ON (exit 0) or Status: OFF (exit 2).",
    "list": "List the plugs the device can fence, one id,alias per line.",
    "list-status": "Like list, with the state (ON, OFF or UNKNOWN) as a third field.",
    "monitor": "Check that the fence device is reachable and usable.",
    "metadata": "Print the agent's XML metadata (meta-data is accepted as well).",
    "manpage": "Print the XML metadata (used to build documentation).",
    "validate-all": "Check the parameters without contacting the fence device.",
}

EXIT_STATUS = (
    ("0", "Success; for status, the plug is ON."),
    ("1", "Any failure: bad parameters, login or connection failure, timeout, power state "
          "not reached, unknown plug."),
    ("2", "status only: reachable, but the plug is OFF."),
)


# Metadata sort key is (order, name), as in fence-agents: connection options first,
# then the agent's own (AGENT_ORDER), then logging/help, then separators and timing.
ORDER = {"quiet": 50, "verbose": 51, "verbose_level": 52, "debug": 53, "version": 54,
         "help": 55, "plug_separator": 100, "separator": 100, "retry_on": 201}
ORDER.update(dict.fromkeys(("delay", "disable_timeout", "login_timeout", "power_timeout",
                            "power_wait", "shell_timeout", "stonith_status_sleep"), 200))
AGENT_ORDER = 2  # standard options not listed above have order 1


def getopt_form(p: Param) -> str:
    """The option part of a help line: ``-a, --ip=[ip]``, ``--ssl-insecure``."""
    long = f"--{p.long}" + ("" if p.arity == "none" else f"=[{p.metavar or 'value'}]")
    return f"-{p.short}, {long}" if p.short else long


def metadata_of(spec: AgentSpec) -> AgentMetadata:
    """fence-agents style metadata: internal keys that differ from their long option
    appear twice, the internal key deprecated and the long spelling obsoleting it."""
    entries: list[tuple[int, str, MetaParam]] = []
    own = {p.name for p in spec.params}
    for p in agent_params(spec):
        order = AGENT_ORDER if p.name in own else ORDER.get(p.name, 1)
        meta = MetaParam(
            name=p.name,
            getopt=getopt_form(p),
            shortdesc=p.shortdesc,
            content=p.content,
            default=p.meta_default if p.meta_default is not None else p.default,
            required=p.meta_required if p.meta_required is not None else p.required,
            options=p.choices,
        )
        spelled = normalise_name(p.long or p.name)
        if spelled == p.name:
            entries.append((order, p.name, meta))
        else:
            entries.append((order, p.name, replace(meta, deprecated=True)))
            entries.append((order, spelled, replace(meta, name=spelled, obsoletes=p.name)))
    entries.sort(key=lambda e: (e[0], e[1]))
    on_target = spec.fabric if spec.on_target is None else spec.on_target
    actions = [MetaAction("on", on_target=on_target, automatic=spec.fabric)]
    actions += [MetaAction(a) for a in spec.actions()[1:]]
    return AgentMetadata(spec.name, spec.shortdesc, spec.longdesc, spec.vendor_url,
                         [e[2] for e in entries], actions, spec.symlinks)


def usage_text(spec: AgentSpec) -> str:
    """The ``-h`` output: one line per option (long spellings; aliases are not repeated)."""
    lines = ["Usage:", f"\t{spec.name} [options]", "Options:"]
    for p in agent_params(spec):
        text = p.shortdesc
        if p.default is not None and p.content != "boolean":
            text += f" (default: {p.default})"
        form = getopt_form(p)
        wrapped = textwrap.wrap(text, 48)
        if len(form) > 30:  # too long for the column: the description starts below it
            lines.append(f"   {form}")
        else:
            lines.append(f"   {form:<30} {wrapped.pop(0)}")
        lines += [f"   {'':<30} {w}" for w in wrapped]
    lines += ["", "With no command line argument, options are read from standard input as",
              "name=value lines (this is how Pacemaker runs the agent). Names are the option's",
              "stdin name (e.g. ipaddr) or its long option (e.g. ip)."]
    return "\n".join(lines) + "\n"


def _esc(text: str) -> str:
    """Escape text for roff: backslashes, and control characters at line starts."""
    text = text.replace("\\", "\\e")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line
                     for line in text.splitlines())


def _opt(text: str) -> str:
    # option spellings use real minus signs so that they can be copied and searched
    return _esc(text).replace("-", "\\-")


def _param_text(p: MetaParam) -> str:
    text = _esc(p.shortdesc.rstrip(".") + ".")
    if p.options:
        text += _esc(f" One of: {', '.join(p.options)}.")
    if p.default is not None:  # italic, so that a default such as "," stays visible
        text += f" Default: \\fI{_esc(p.default)}\\fR."
    if p.required:
        text += " Required."
    return text


def _tagged(tag: str, body: str) -> list[str]:
    return [".TP", f".B {tag}", body]


def render_manpage(
    meta: AgentMetadata,
    version: str = "",
    date: str = "",
    exit_status: Sequence[tuple[str, str]] = EXIT_STATUS,
) -> str:
    """A section-8 man page. ``date`` is left out unless given (reproducible builds)."""
    source = f"guestfence {version}".strip()
    out = [f'.TH {meta.name.upper()} 8 "{date}" "{source}" "Fence agents"',
           ".SH NAME", f"{_opt(meta.name)} \\- {_esc(meta.shortdesc)}",
           ".SH SYNOPSIS", f".B {_opt(meta.name)}", "[\\fIOPTIONS\\fR]", ".br",
           f".B {_opt(meta.name)}", "< \\fIFILE\\fR (name=value lines)",
           ".SH DESCRIPTION"]
    for paragraph in meta.longdesc.split("\n\n"):
        if paragraph.strip():
            out += [".PP", _esc(paragraph.strip())]
    out += [".PP", f"{_opt(meta.name)} reads its options from the command line or, when it has "
            "no argument at all, from standard input as one name=value per line. Pacemaker "
            "always uses standard input. The two are never combined."]
    if meta.vendor_url:
        out += [".PP", f"Vendor URL: {_esc(meta.vendor_url)}"]
    if meta.symlinks:
        out += [".PP", "Also installed as: "
                + ", ".join(_opt(name) for name, _ in meta.symlinks) + "."]
    # each option once, under its current spelling; deprecated names go to STDIN PARAMETERS
    current = [p for p in meta.params if not p.deprecated]
    out.append(".SH OPTIONS")
    for p in current:
        out += _tagged(_opt(p.getopt or p.name), _param_text(p))
    out.append(".SH ACTIONS")
    for a in meta.actions:
        text = ACTION_TEXT.get(a.name, "")
        if a.automatic:
            text += " Run automatically when a node joins the cluster (unfencing)."
        if a.on_target:
            text += " Must run on the node being unfenced."
        out += _tagged(_opt(a.name), _esc(text.strip()))
    out += [".SH STDIN PARAMETERS", ".PP",
            "Names accepted on standard input; - and _ are interchangeable."]
    out += _stdin_section(meta.params)
    names = {a.name for a in meta.actions}
    out.append(".SH EXIT STATUS")
    for code, text in exit_status:
        if code != "2" or "status" in names:
            out += _tagged(code, _esc(text))
    out += [".SH SEE ALSO", "stonith_admin(8), pacemaker\\-fenced(7)"]
    return "\n".join(out) + "\n"


def _stdin_section(params: Sequence[MetaParam]) -> list[str]:
    out: list[str] = []
    for p in params:
        if p.deprecated:
            replacement = next((q.name for q in params if q.obsoletes == p.name), None)
            body = f"Deprecated; same as {_opt(replacement)}." if replacement else "Deprecated."
            if p.getopt:
                body += f" Command line: {_opt(p.getopt)}."
            out += _tagged(_opt(p.name), body)
        else:
            body = _param_text(p)
            if p.obsoletes:
                body += f" Replaces {_opt(p.obsoletes)}."
            out += _tagged(_opt(p.name), body)
    return out
