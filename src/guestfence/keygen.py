"""Creating shared key files safely: 4096 random bytes, mode 0600 from the first byte."""

from __future__ import annotations

import os
import secrets

from guestfence.errors import KeyFileError
from guestfence.virt.wire import KEY_MAX_BYTES


def write_key(path: str, *, force: bool = False, data: bytes | None = None) -> None:
    """Write a key atomically: a temporary file created 0600, then renamed into place."""
    if os.path.exists(path) and not force:
        raise KeyFileError(f"{path} already exists; pass --force to replace it")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise KeyFileError(f"directory {directory} does not exist; create it first")
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data if data is not None else secrets.token_bytes(KEY_MAX_BYTES))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
