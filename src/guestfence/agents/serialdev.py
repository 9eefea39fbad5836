"""Opening a guest serial port the way fence_virt -D does."""

from __future__ import annotations

import fcntl
import os
import struct
import termios
import time

from guestfence.errors import TransportError

_SPEEDS = {
    2400: termios.B2400,
    9600: termios.B9600,
    19200: termios.B19200,
    38400: termios.B38400,
    57600: termios.B57600,
    115200: termios.B115200,
}
_SIZES = {"5": termios.CS5, "6": termios.CS6, "7": termios.CS7, "8": termios.CS8}


def parse_serial_params(text: str) -> tuple[int, int, int]:
    """'115200,8N1' -> (speed constant, cflag bits, stop-bit flag)."""
    speed_text, _, framing = text.partition(",")
    try:
        speed = _SPEEDS[int(speed_text)]
    except (ValueError, KeyError):
        raise TransportError(
            f"Invalid serial speed '{speed_text}'; expected one of "
            + ", ".join(str(s) for s in _SPEEDS)
        ) from None
    framing = framing or "8N1"
    if len(framing) != 3 or framing[0] not in _SIZES or framing[1].upper() not in "NEO" or \
            framing[2] not in "12":
        raise TransportError(f"Invalid serial framing '{framing}'; expected e.g. 8N1, 7E2")
    cflag = _SIZES[framing[0]]
    parity = framing[1].upper()
    if parity != "N":
        cflag |= termios.PARENB | (termios.PARODD if parity == "O" else 0)
    stop = termios.CSTOPB if framing[2] == "2" else 0
    return speed, cflag, stop


def open_serial(device: str, params: str) -> int:
    """Open, lock and configure the device; raises TransportError with the reason."""
    speed, cflag, stop = parse_serial_params(params)
    try:
        fd = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        raise TransportError(f"Unable to open serial device {device}: {e.strerror}") from e
    try:
        # an exclusive POSIX write lock, so two fencing calls never share the port
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        attrs = termios.tcgetattr(fd)
        attrs[0] = 0  # iflag: raw
        attrs[1] = 0  # oflag
        attrs[2] = cflag | stop | termios.CREAD | termios.CLOCAL | termios.CRTSCTS
        attrs[3] = 0  # lflag
        attrs[4] = attrs[5] = speed
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        termios.tcflush(fd, termios.TCIOFLUSH)
        _pulse_modem_lines(fd)
    except OSError as e:
        os.close(fd)
        raise TransportError(f"Unable to set up serial device {device}: {e.strerror}") from e
    except termios.error as e:
        os.close(fd)
        raise TransportError(f"Unable to set up serial device {device}: {e}") from e
    return fd


def _pulse_modem_lines(fd: int) -> None:
    """Drop DTR/RTS and raise them again, as the C client does, so the host sees a fresh start."""
    bits = struct.pack("I", termios.TIOCM_DTR | termios.TIOCM_RTS)
    try:
        fcntl.ioctl(fd, termios.TIOCMBIC, bits)
        time.sleep(0.3)
        fcntl.ioctl(fd, termios.TIOCMBIS, bits)
    except OSError:
        pass  # pseudo-terminals have no modem lines
