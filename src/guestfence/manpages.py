"""Man pages of the agents, rendered from the same metadata they print with -o metadata."""

from __future__ import annotations

import os

from guestfence import __version__
from guestfence.agent.manpage import render_manpage
from guestfence.agents import virtparams

AGENTS = {
    "fence_xvm": virtparams.XVM_PARAMS,
    "fence_virt": virtparams.VIRT_PARAMS,
}


# fence_xvm / fence_virt exit with the daemon's answer, as the C agents do
VIRT_EXIT_STATUS = (
    ("0", "Success; for status, the VM is ON."),
    ("1", "Failure: bad parameters, no host answered before the timeout, authentication "
          "failed, or the host could not carry out the operation (for example: unknown VM)."),
    ("2", "status only: the host answered that the VM is OFF."),
    ("3", "The host's groups do not allow this requester to act on this VM."),
)


def manpage_text(agent: str) -> str:
    return render_manpage(virtparams.metadata(agent, AGENTS[agent]), __version__,
                          exit_status=VIRT_EXIT_STATUS)


def write_manpages(directory: str) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    written = []
    for agent in AGENTS:
        path = os.path.join(directory, f"{agent}.8")
        with open(path, "w", encoding="utf-8") as f:
            f.write(manpage_text(agent))
        written.append(path)
    return written
