"""Man pages of the agents, rendered from the same metadata they print with -o metadata."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from guestfence import __version__
from guestfence.agent.manpage import EXIT_STATUS, metadata_of, render_manpage
from guestfence.agent.metadata import AgentMetadata
from guestfence.agent.params import Param
from guestfence.agent.standard import agent_params
from guestfence.agents import scsi, virtparams

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
}


def manpage_text(agent: str) -> str:
    page = AGENTS[agent]
    return render_manpage(page.metadata(), __version__, exit_status=page.exit_status)


def write_manpages(directory: str) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    written = []
    for agent in AGENTS:
        path = os.path.join(directory, f"{agent}.8")
        with open(path, "w", encoding="utf-8") as f:
            f.write(manpage_text(agent))
        written.append(path)
    return written
