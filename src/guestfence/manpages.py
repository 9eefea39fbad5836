"""Every man page, rendered from what the programs themselves run with.

The agents' pages come from the metadata they print with -o metadata;
guestfenced(8) and guestfence(1) from their argparse parsers (through
argparse-manpage), so an option or sub-command added to the code is in the
page the next time `guestfence manpages` runs. The prose no parser knows is in
`manprose`.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from argparse_manpage.manpage import Manpage

from guestfence import __version__, manprose
from guestfence.agent.manpage import EXIT_STATUS, metadata_of, render_manpage
from guestfence.agent.metadata import AgentMetadata
from guestfence.agent.params import Param
from guestfence.agent.standard import agent_params
from guestfence.agents import rhevm, scsi, virtparams, vmware

# fence_xvm / fence_virt exit with the daemon's answer, as the C agents do
VIRT_EXIT_STATUS = (
    ("0", "Success; for status, the VM is ON."),
    ("1", "Failure: bad parameters, no host answered before the timeout, authentication "
          "failed, or the host could not carry out the operation (for example: unknown VM)."),
    ("2", "status only: the host answered that the VM is OFF."),
    ("3", "The host's groups do not allow this requester to act on this VM."),
)


@dataclass(frozen=True)
class Page:
    metadata: Callable[[], AgentMetadata]
    params: tuple[Param, ...]
    exit_status: tuple[tuple[str, str], ...] = EXIT_STATUS


AGENTS = {
    "fence_xvm": Page(lambda: virtparams.metadata("fence_xvm", virtparams.XVM_PARAMS),
                      virtparams.XVM_PARAMS, VIRT_EXIT_STATUS),
    "fence_virt": Page(lambda: virtparams.metadata("fence_virt", virtparams.VIRT_PARAMS),
                       virtparams.VIRT_PARAMS, VIRT_EXIT_STATUS),
    "fence_scsi": Page(lambda: metadata_of(scsi.SPEC), agent_params(scsi.SPEC)),
    "fence_vmware_soap": Page(lambda: metadata_of(vmware.SPEC), agent_params(vmware.SPEC)),
    "fence_rhevm": Page(lambda: metadata_of(rhevm.SPEC), agent_params(rhevm.SPEC)),
}


def manpage_text(agent: str) -> str:
    page = AGENTS[agent]
    return render_manpage(page.metadata(), __version__, exit_status=page.exit_status)


@dataclass(frozen=True)
class CommandPage:
    parser: Callable[[], argparse.ArgumentParser]
    section: str
    manual: str
    name_line: str
    description: str
    sections: tuple[tuple[str, str], ...]


def _daemon_parser() -> argparse.ArgumentParser:
    from guestfence.host.main import build_parser

    return build_parser()


def _cli_parser() -> argparse.ArgumentParser:
    from guestfence.cli import build_parser

    return build_parser()


COMMANDS = {
    "guestfenced": CommandPage(_daemon_parser, "8", "System Administration",
                               manprose.GUESTFENCED_NAME, manprose.GUESTFENCED_DESCRIPTION,
                               manprose.GUESTFENCED_SECTIONS),
    "guestfence": CommandPage(_cli_parser, "1", "User Commands", manprose.GUESTFENCE_NAME,
                              manprose.GUESTFENCE_DESCRIPTION, manprose.GUESTFENCE_SECTIONS),
}


def command_manpage_text(command: str) -> str:
    page = COMMANDS[command]
    parser = page.parser()
    # the NAME line and DESCRIPTION say it better; the epilog points at this very page
    parser.description = parser.epilog = None
    man = Manpage(parser)
    man.section = page.section
    man.manual = page.manual
    man.source = f"guestfence {__version__}"
    man.date = ""  # reproducible, like the agents' pages
    man.description = page.name_line
    man.add_section("DESCRIPTION", "=", page.description)
    for heading, text in page.sections:
        man.add_section(heading, "=", text)
    # argparse-manpage copies help text as it is; a line starting with an apostrophe
    # would be a roff control line (and vanish), so it gets the zero-width escape
    return re.sub(r"^'", r"\\&'", str(man), flags=re.MULTILINE)


def manpage_files() -> dict[str, Callable[[], str]]:
    """File name -> its text, for every page the project ships."""
    files: dict[str, Callable[[], str]] = {
        f"{agent}.8": functools.partial(manpage_text, agent) for agent in AGENTS}
    for command, page in COMMANDS.items():
        files[f"{command}.{page.section}"] = functools.partial(command_manpage_text, command)
    return files


def write_manpages(directory: str) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    written = []
    for name, render in manpage_files().items():
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(render())
        written.append(path)
    return written
