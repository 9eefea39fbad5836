"""One exception tree for the whole project.

Errors are raised where they are found (the core) and turned into exit codes
and log lines at one boundary (the command-line entry points).
"""

from __future__ import annotations


class GuestfenceError(Exception):
    """Base of every error guestfence raises on purpose."""


class ConfigError(GuestfenceError):
    """A configuration file or option is wrong; the message names where and what was expected."""


class ProtocolError(GuestfenceError):
    """The peer sent bytes that do not follow the fence_virt wire protocol."""


class AuthError(GuestfenceError):
    """Signature or challenge/response verification failed."""


class KeyFileError(GuestfenceError):
    """The shared key file is missing, unreadable or insecure."""


class BackendError(GuestfenceError):
    """The hypervisor backend could not carry out an operation."""


class TransportError(GuestfenceError):
    """A socket, device or connection failed or timed out."""
