"""Our own iSCSI target (``guestfence target serve``) on 127.0.0.1, as a lab part.

:class:`OurTarget` mirrors :class:`guestfence.lab.tgt.TgtTarget` (same
constructor, ``url()``, ``lun_path()``, ``restart()``, ``stop()``, logs) so a
test written for tgt runs against ours by swapping the class.  Differences
worth knowing: persistent reservations are bound to the I_T nexus
(InitiatorName + ISID) and survive a re-login; with APTPL they survive a
restart too (FileLun keeps ``<lun>.pr`` next to the image).

The target runs as a child process (``python -m``-style, the same interpreter
as the caller, so the venv's code is what runs).  Ready: the ``--ready-file``
appears, written by the target once its socket listens.  Stopping: SIGTERM
(the target asks initiators to log out, then closes), SIGKILL after a few
seconds; ``restart(hard=True)`` SIGKILLs at once (a crashed target).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from guestfence.lab.iscsilab import LabIscsiTarget
from guestfence.lab.netns import LabError
from guestfence.lab.tgt import free_port

DEFAULT_IQN = "iqn.2026-11.org.guestfence.lab:ours"
DEFAULT_LUN_SIZE = 64 * 1024 * 1024
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
LOGOUT_GRACE = 0.3  # lab initiators are mostly idle libiscsi contexts that never answer
_POLL = 0.01
_ENTRY = "import sys; from guestfence.cli import main; sys.argv[0] = 'guestfence'; main()"


class OurTarget(LabIscsiTarget):
    """``guestfence target serve`` with ``luns`` sparse file LUNs (LUN 1..N) on 127.0.0.1."""

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        iqn: str = DEFAULT_IQN,
        luns: int = 1,
        lun_size: int = DEFAULT_LUN_SIZE,
        chap: tuple[str, str] | None = None,
        mutual_chap: tuple[str, str] | None = None,
        port: int | None = None,
        ready_timeout: float = READY_TIMEOUT,
        log_level: str = "INFO",
        sync: str = "always",
    ) -> None:
        self.sync = sync
        super().__init__(workdir, iqn=iqn, luns=luns, lun_size=lun_size, chap=chap, port=port,
                         ready_timeout=ready_timeout)
        self.mutual_chap = mutual_chap
        self.log_level = log_level

    @property
    def log_path(self) -> Path:
        return self._dir() / "target.log"

    def _lun_leftovers(self, lun_file: Path) -> list[Path]:
        return [lun_file, lun_file.with_name(lun_file.name + ".pr")]  # the PR state file

    def _scratch_files(self) -> list[Path]:
        return [self.log_path, self.ready_path]

    @property
    def ready_path(self) -> Path:
        return self._dir() / "target.ready"


    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> OurTarget:
        if self._proc is not None:
            raise LabError("target already started")
        try:
            self._prepare_files()
            self._start_process()
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare_files(self) -> None:
        if self._requested_workdir is not None:
            self._requested_workdir.mkdir(parents=True, exist_ok=True)
            self.workdir = self._requested_workdir.resolve()
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="guestfence-target-"))
            self._own_workdir = True
        for lun in range(1, self.luns + 1):
            path = self.lun_path(lun)
            with open(path, "xb") as f:  # refuse to reuse someone else's image
                self._files.append(path)
                f.truncate(self.lun_size)  # sparse
        if self.port is None:
            self.port = free_port()

    def argv(self) -> list[str]:
        argv = [sys.executable, "-c", _ENTRY, "target", "serve", "--iqn", self.iqn,
                "--portal", self.portal, "--ready-file", str(self.ready_path),
                "--log-level", self.log_level, "--logout-grace", str(LOGOUT_GRACE),
                "--sync", self.sync]
        for lun in range(1, self.luns + 1):
            argv += ["--lun", str(self.lun_path(lun))]
        if self.chap is not None:
            argv += ["--chap", ":".join(self.chap)]
        if self.mutual_chap is not None:
            argv += ["--mutual-chap", ":".join(self.mutual_chap)]
        return argv

    def _start_process(self) -> None:
        self.ready_path.unlink(missing_ok=True)
        with open(self.log_path, "ab") as logf:
            self._proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's ^C is for pytest, not for the target
            )
        deadline = time.monotonic() + self.ready_timeout
        while not self.ready_path.exists():
            rc = self._proc.poll()
            if rc is not None:
                raise LabError(f"target exited (rc {rc}) before it was ready; "
                               f"log {self.log_path}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise LabError(f"target not ready after {self.ready_timeout:g} s; "
                               f"log {self.log_path}:\n{self.log_tail()}")
            time.sleep(_POLL)

    def _stop_process(self, *, hard: bool = False, timeout: float = STOP_TIMEOUT) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None and not hard:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout)
        return proc.returncode

    def restart(self, *, hard: bool = False) -> OurTarget:
        """Stop (SIGKILL if ``hard``) and start again: same portal, IQN and LUN files."""
        if self.workdir is None:
            raise LabError("target not started")
        self._stop_process(hard=hard)
        try:
            self._start_process()
        except BaseException:
            self.stop()
            raise
        return self
