"""What every iSCSI target the lab runs has in common: LUN files, a portal on loopback, URLs.

TgtTarget (tgt, the reference) and OurTarget (guestfence target serve) differ
only in how they start and stop their process; tests written for one run
against the other unchanged.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from guestfence.lab.lifecycle import StartStop
from guestfence.lab.netns import LabError

HOST = "127.0.0.1"  # lab targets listen on loopback only


class LabIscsiTarget(StartStop):
    def __init__(
        self,
        workdir: str | os.PathLike[str] | None,
        *,
        iqn: str,
        luns: int,
        lun_size: int,
        chap: tuple[str, str] | None,
        port: int | None,
        ready_timeout: float,
    ) -> None:
        if luns < 1:
            raise ValueError(f"luns must be at least 1, not {luns}")
        if lun_size < 512 or lun_size % 512:
            raise ValueError(f"lun_size must be a positive multiple of 512, not {lun_size}")
        if chap is not None and not (chap[0] and chap[1]):
            raise ValueError("chap needs a user and a password")
        self.iqn = iqn
        self.luns = luns
        self.lun_size = lun_size
        self.chap = chap
        self.ready_timeout = ready_timeout
        self._requested_workdir = Path(workdir) if workdir is not None else None
        self._own_workdir = False
        self.workdir: Path | None = None
        self.port = port
        self._auto_port = port is None
        self._proc: subprocess.Popen[bytes] | None = None
        self._files: list[Path] = []

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.iqn} on {HOST}:{self.port}, luns={self.luns}, "
                f"pid={self.pid})")

    def _dir(self) -> Path:
        if self.workdir is None:
            raise LabError(f"{type(self).__name__} not started")
        return self.workdir

    @property
    def portal(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def lun_path(self, lun: int) -> Path:
        if not 1 <= lun <= self.luns:
            raise ValueError(f"LUN {lun} out of range 1..{self.luns}")
        return self._dir() / f"lun{lun}.img"

    def url(self, lun: int = 1, *, user: str | None = None, password: str | None = None) -> str:
        """``iscsi://[user%password@]127.0.0.1:PORT/IQN/LUN``."""
        if not 0 <= lun <= self.luns:
            raise ValueError(f"LUN {lun} out of range 0..{self.luns}")
        cred = f"{user}%{password}@" if user is not None else ""
        return f"iscsi://{cred}{self.portal}/{self.iqn}/{lun}"
