"""Loading the daemon's shared keys (refusing insecure or unreadable files); fingerprints."""

from __future__ import annotations

import hashlib
import os
import stat

from guestfence.errors import KeyFileError
from guestfence.virt.wire import read_open_key


def fingerprint(key: bytes) -> str:
    """A short name for a key that can be compared on host and guests without revealing it:
    the first 16 hex digits of the SHA-256 of the key bytes."""
    return hashlib.sha256(key).hexdigest()[:16]


def load_daemon_key(path: str) -> bytes:
    """The key bytes; the file must be a regular file of mode 0600, owned by root or by
    this process's user.

    The C daemon silently chmods an insecure key to 0600. We stop instead and say
    how to fix it: a key that was world-readable may already be compromised. The
    checks are made on the open file (fstat), so the file read is the file checked.
    """
    try:  # O_NONBLOCK: a FIFO put in the key's place must not hang the reload
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise KeyFileError(
            f"key file {path}: {e.strerror}. Create one with: guestfence keygen {path}"
        ) from e
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode != 0o600:
            raise KeyFileError(
                f"key file {path} has mode {mode:04o}; it must be 0600. If it may have been "
                f"read by others, make a new one (guestfence keygen {path}) and copy it to the "
                f"guests; otherwise fix it with: chmod 600 {path}"
            )
        if st.st_uid not in (0, os.geteuid()):
            raise KeyFileError(
                f"key file {path} belongs to uid {st.st_uid}: that user can read or replace "
                f"it. If they may have, make a new one (guestfence keygen {path}); otherwise "
                f"fix it with: chown {os.geteuid()} {path}"
            )
        return read_open_key(f, path)


def successor_path(key_file: str, configured: str | None = None) -> str:
    """Where a key's successor lives during a rotation: configured, or ``<key_file>.next``."""
    return configured or f"{key_file}.next"


def load_optional_key(path: str) -> bytes | None:
    """A successor key: None when the file does not exist (no rotation under way)."""
    if not os.path.lexists(path):
        return None
    return load_daemon_key(path)
