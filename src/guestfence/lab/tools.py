"""Finding the external programs the lab runs, and naming the package of a missing one."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping


def find_tool(name: str) -> str | None:
    """Absolute path of executable ``name`` (``/usr/sbin`` and ``/sbin`` searched too)."""
    path = os.environ.get("PATH", "")
    return shutil.which(name, path=os.pathsep.join([path, "/usr/sbin", "/sbin"]))


def missing(required: Mapping[str, str]) -> list[str]:
    """One line per executable of ``required`` (name -> Debian package) that is missing."""
    return [f"{tool} (apt-get install {pkg})" for tool, pkg in required.items()
            if find_tool(tool) is None]
