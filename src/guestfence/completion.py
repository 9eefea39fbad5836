"""`guestfence completion bash|zsh`: shell completion generated from the option definitions.

guestfence and guestfenced are argparse programs: shtab renders their parsers
(every sub-command and option other modules register is picked up when the
script is generated). The fence agents parse getopt-style options from their
`Param` tables (`agent.params`), which shtab cannot read; their completion
is generated here from those same tables: every short and long option, the
agent's actions for -o/--action, the choices of select-type parameters, and
file names for parameters that name a file or device.

Print the script and source it: bash `source <(guestfence completion bash)` or
a file in /etc/bash_completion.d/; zsh `source <(guestfence completion zsh)`
after compinit, or a file `_guestfence` in $fpath.
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from guestfence.agent.params import Param

SHELLS = ("bash", "zsh")
# Values the agents document only in their description text
_HASHES = ("none", "sha1", "sha256", "sha512")
KNOWN_VALUES = {"hash": _HASHES, "auth": _HASHES, "ip_family": ("auto", "ipv4", "ipv6")}
_FILE_PARAM = re.compile(r"(file|_device|devices|_script|_path)$")
_FILE_METAVAR = re.compile(r"(FILE|PATH|PIDFILE|DIRECTORY|\.yaml)$", re.IGNORECASE)


@dataclass(frozen=True)
class AgentOptions:
    name: str
    params: tuple[Param, ...]
    actions: tuple[str, ...]


def agents() -> list[AgentOptions]:
    """Every agent with an option table: the same table its man page is rendered from."""
    from guestfence.manpages import AGENTS

    return [AgentOptions(name, page.params, tuple(a.name for a in page.metadata().actions))
            for name, page in AGENTS.items()]


def values_of(param: Param, agent: AgentOptions) -> tuple[str, ...] | None:
    """Candidate values of an option: a word list, () for file names, None for free text."""
    if param.name == "action":
        return agent.actions
    if param.choices:
        return param.choices
    if param.name in KNOWN_VALUES:
        return KNOWN_VALUES[param.name]
    if _FILE_PARAM.search(param.name):
        return ()
    return None


# ------------------------------------------------------------- argparse programs


def _mark_file_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Let shtab complete file names where an option or argument names a file."""
    import shtab  # here, not at the top: every `guestfence` run imports this module

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _mark_file_options(sub)
        elif isinstance(action.metavar, str) and _FILE_METAVAR.search(action.metavar):
            action.complete = shtab.FILE  # type: ignore[attr-defined]
    return parser


def program_parsers() -> list[argparse.ArgumentParser]:
    from guestfence.cli import build_parser as cli_parser
    from guestfence.host.main import build_parser as daemon_parser

    return [_mark_file_options(cli_parser()), _mark_file_options(daemon_parser())]


def _program_function(parser: argparse.ArgumentParser) -> str:
    return "_shtab_" + re.sub(r"\W", "_", parser.prog)


def _agent_function(agent: AgentOptions) -> str:
    return "_guestfence_agent_" + re.sub(r"\W", "_", agent.name)


# ------------------------------------------------------------- agents: bash


def _bash_function(agent: AgentOptions) -> str:
    fn = _agent_function(agent)
    words: list[str] = []
    cases: list[str] = []
    for p in agent.params:
        flags = ([f"-{p.short}"] if p.short else []) + ([f"--{p.long}"] if p.long else [])
        words += flags
        if not flags or p.arity != "required":
            continue  # -S takes its value attached (-S3), never as the next word
        values = values_of(p, agent)
        if values is None:
            reply = "return 0"
        elif values:
            reply = f'COMPREPLY=($(compgen -W {shlex.quote(" ".join(values))} -- "$cur")); return 0'
        else:
            reply = 'COMPREPLY=($(compgen -f -- "$cur")); return 0'
        cases.append(f"        {'|'.join(flags)}) {reply};;")
    return "\n".join([
        f"{fn}() {{",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
        '    if [[ $cur == "=" ]]; then cur=""; fi',
        '    if [[ $prev == "=" ]]; then prev="${COMP_WORDS[COMP_CWORD-2]}"; fi  # --opt=value',
        '    case "$prev" in',
        *cases,
        "    esac",
        f'    COMPREPLY=($(compgen -W {shlex.quote(" ".join(words))} -- "$cur"))',
        "}",
        f"complete -o bashdefault -o default -F {fn} {agent.name}",
        "",
    ])


# ------------------------------------------------------------- agents: zsh


def _zsh_escape(text: str) -> str:
    return re.sub(r"([\[\]:\\])", r"\\\1", text).replace("'", "'\\''")


def _zsh_function(agent: AgentOptions) -> str:
    fn = _agent_function(agent)
    specs: list[str] = []
    for p in agent.params:
        desc = _zsh_escape(p.shortdesc)
        values = values_of(p, agent)
        action = (" " if values is None else "_files" if not values
                  else "(" + " ".join(values) + ")")
        value = f":{p.metavar or p.name}:{action}"
        repeat = "*" if p.repeat_counts else ""
        if p.short:
            suffix = {"none": "", "required": "+", "optional": "-"}[p.arity]
            specs.append(f"'{repeat}-{p.short}{suffix}[{desc}]"
                         f"{value if p.arity != 'none' else ''}'")
        if p.long:
            suffix = "=" if p.arity == "required" else ""
            specs.append(f"'{repeat}--{p.long}{suffix}[{desc}]"
                         f"{value if p.arity == 'required' else ''}'")
    body = " \\\n    ".join(specs)
    return f"{fn}() {{\n  _arguments -s \\\n    {body}\n}}\n"


# ------------------------------------------------------------- the scripts


def bash_script() -> str:
    import shtab

    parts = ["# bash completion for guestfence, guestfenced and the guestfence fence agents",
             "# generated by `guestfence completion bash`", ""]
    for parser in program_parsers():
        parts.append(shtab.complete(parser, shell="bash"))
    parts += [_bash_function(agent) for agent in agents()]
    return "\n".join(parts)


def _zsh_without_dispatch(script: str) -> str:
    """shtab's zsh script minus its first line and its final register-or-call block."""
    script = script.split("\n", 1)[1]
    return script[:script.rindex("typeset -A opt_args")]


def zsh_script() -> str:
    import shtab

    programs = program_parsers()
    agent_list = agents()
    functions = {p.prog: _program_function(p) for p in programs}
    functions |= {a.name: _agent_function(a) for a in agent_list}
    parts = [f"#compdef {' '.join(functions)}",
             "# zsh completion generated by `guestfence completion zsh`", ""]
    parts += [_zsh_without_dispatch(shtab.complete(p, shell="zsh")) for p in programs]
    parts += [_zsh_function(agent) for agent in agent_list]
    cases = "\n".join(f"    {name}) {fn} \"$@\" ;;" for name, fn in functions.items())
    registrations = "\n".join(f"  compdef {fn} {name}" for name, fn in functions.items())
    parts.append(
        "typeset -A opt_args\n"
        "if [[ $zsh_eval_context[-1] == (eval|file|toplevel|cmdsubst) ]]; then\n"
        "  # sourced: register the functions\n"
        f"{registrations}\n"
        "else\n"
        "  # autoloaded from $fpath as _guestfence: complete the command at hand\n"
        "  case $service in\n"
        f"{cases}\n"
        "  esac\n"
        "fi\n")
    return "\n".join(parts)


def script(shell: str) -> str:
    return bash_script() if shell == "bash" else zsh_script()


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "completion",
        help="print the shell completion script for guestfence, guestfenced and the agents",
        description="Print a completion script for guestfence, guestfenced and the fence "
        "agents, generated from their option definitions. bash: source <(guestfence "
        "completion bash), or save it as /etc/bash_completion.d/guestfence. zsh: source "
        "<(guestfence completion zsh) after compinit, or save it as _guestfence in a "
        "directory of $fpath.",
    )
    p.add_argument("shell", choices=SHELLS, help="the shell to complete for")


def run(args: argparse.Namespace) -> int:
    print(script(args.shell), end="")
    return 0


def option_words(params: Sequence[Param]) -> list[str]:
    """Every option an agent accepts, as typed (for tests and checks)."""
    return [f"-{p.short}" for p in params if p.short] + [f"--{p.long}" for p in params if p.long]
