"""What every iSCSI target the lab runs has in common: LUN files, a portal on loopback, URLs.

TgtTarget (tgt, the reference) and OurTarget (guestfence target serve) differ
only in how they start and stop their process; tests written for one run
against the other unchanged.
"""

from __future__ import annotations

import os
import shutil
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

    # -- what a subclass provides ------------------------------------------------------

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    def _stop_process(self, *, hard: bool = False) -> int | None:
        raise NotImplementedError

    def _lun_leftovers(self, lun_file: Path) -> list[Path]:
        """Files to remove with a LUN file (ours keeps the PR state beside it)."""
        return [lun_file]

    def _scratch_files(self) -> list[Path]:
        """Files to remove from a workdir the caller gave (ours is removed whole)."""
        return [self.log_path]

    # -- shared ------------------------------------------------------------------------

    def stop(self) -> int | None:
        """Stop the target and remove the LUN files (and the scratch dir if ours); idempotent."""
        try:
            return self._stop_process()
        finally:
            for lun_file in self._files:
                for path in self._lun_leftovers(lun_file):
                    path.unlink(missing_ok=True)
            self._files.clear()
            if self.workdir is not None:
                if self._own_workdir:
                    shutil.rmtree(self.workdir, ignore_errors=True)
                else:
                    for path in self._scratch_files():
                        path.unlink(missing_ok=True)
            self.workdir = None
            self._own_workdir = False
            if self._auto_port:
                self.port = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (FileNotFoundError, LabError):
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])
