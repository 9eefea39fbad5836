"""guestfenced: the host daemon (the fence_virtd role), reading the same fence_virt.conf.

    guestfenced [-F] [-f FILE] [-d LEVEL] [-p PIDFILE] [-w]

Start-up stops with a clear message, and nothing started, when the
configuration, the key file or the backend is not usable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import logging.handlers
import os
import signal
import sys
import time
from typing import Any

from guestfence.errors import BackendError, ConfigError, GuestfenceError, KeyFileError
from guestfence.host.acl import AccessMap
from guestfence.host.config import (
    Config,
    MulticastListenerConfig,
    SerialListenerConfig,
    TcpListenerConfig,
    VsockListenerConfig,
    load_config,
)
from guestfence.host.keys import load_daemon_key
from guestfence.host.server import Backend, FenceService
from guestfence.virt.wire import HashType

DEFAULT_CONFIG = "/etc/fence_virt.conf"
DEFAULT_PIDFILE = "/run/guestfenced.pid"
INIT_RETRY_SECONDS = 5.0

log = logging.getLogger("guestfenced")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="guestfenced",
        description="Host daemon answering fence_xvm / fence_virt requests "
        "(wire-compatible with fence_virtd).",
        epilog="Reads the fence_virt.conf format of fence_virtd; see guestfenced(8).",
    )
    p.add_argument("-F", dest="foreground", action="store_true",
                   help="stay in the foreground and log to stderr")
    p.add_argument("-f", dest="config", default=DEFAULT_CONFIG, metavar="FILE",
                   help=f"configuration file (default {DEFAULT_CONFIG})")
    p.add_argument("-d", dest="debug", type=int, default=None, metavar="LEVEL",
                   help="debug level (overrides the config's 'debug')")
    p.add_argument("-p", dest="pidfile", default=DEFAULT_PIDFILE, metavar="PIDFILE",
                   help=f"pid file (default {DEFAULT_PIDFILE})")
    p.add_argument("-w", dest="wait", action="store_true",
                   help="keep retrying backend and listener start-up every 5 s")
    p.add_argument("-V", "--version", action="store_true", help="print the version and exit")
    return p


def setup_logging(level: int, foreground: bool) -> None:
    handler: logging.Handler
    if foreground or not os.path.exists("/dev/log"):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: %(message)s"))
    else:
        handler = logging.handlers.SysLogHandler(
            "/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON
        )
        handler.setFormatter(logging.Formatter("guestfenced[%(process)d]: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if level > 0 else logging.INFO)


def make_backend(config: Config) -> Backend:
    from guestfence.host.backends.libvirt import LibvirtBackend

    if config.backend.name == "cpg":
        raise ConfigError(
            f"{config.path}: backend 'cpg' is not available yet; use backend = \"libvirt\""
        )
    return LibvirtBackend(config.backend.uris, config.backend.name_mode,
                          claim_shut_off=config.backend.claim_shut_off)


def _key_and_algorithms(config: Config) -> tuple[bytes, HashType, HashType]:
    listener = config.listener
    if isinstance(listener, SerialListenerConfig):
        return b"", HashType.NONE, HashType.NONE
    auth = HashType.from_name(listener.auth)
    min_hash = HashType.from_name(listener.hash)
    key = b""
    if auth is not HashType.NONE or min_hash is not HashType.NONE:
        key = load_daemon_key(listener.key_file)
    return key, auth, min_hash


def make_listener(config: Config, service: FenceService) -> Any:
    from guestfence.host.listeners.network import MulticastListener, StreamListener

    listener = config.listener
    if isinstance(listener, MulticastListenerConfig):
        return MulticastListener(listener, service)
    if isinstance(listener, TcpListenerConfig):
        return StreamListener("tcp", listener, service)
    if isinstance(listener, VsockListenerConfig):
        return StreamListener("vsock", listener, service)
    from guestfence.host.listeners.serial import SerialListener

    return SerialListener(listener, service)


def check_pidfile(path: str) -> None:
    try:
        with open(path) as f:
            pid = int(f.read().strip() or "0")
    except (OSError, ValueError):
        return
    if pid <= 0 or pid == os.getpid():
        return
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return
    # matches both the console script (.../guestfenced) and python -m guestfence.host.main
    if b"guestfence" in cmdline:
        raise GuestfenceError(f"guestfenced is already running as pid {pid} (pid file {path})")


def write_pidfile(path: str) -> None:
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def daemonize() -> None:
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)


async def serve(config: Config, wait: bool) -> int:
    key, auth, min_hash = _key_and_algorithms(config)
    while True:
        try:
            backend = await asyncio.to_thread(make_backend, config)
            break
        except BackendError as e:
            if not wait:
                raise
            log.error("%s; retrying in %.0f s", e, INIT_RETRY_SECONDS)
            await asyncio.sleep(INIT_RETRY_SECONDS)
    for warning in config.warnings:
        log.warning("%s", warning)
    service = FenceService(backend, AccessMap(config.groups), key, auth, min_hash)
    listener = make_listener(config, service)
    while True:
        try:
            await listener.start()
            break
        except OSError as e:
            if not wait:
                raise GuestfenceError(f"cannot start the {config.listener!r} listener: {e}") \
                    from e
            log.error("listener start failed: %s; retrying in %.0f s", e, INIT_RETRY_SECONDS)
            await asyncio.sleep(INIT_RETRY_SECONDS)
    log.info("guestfenced ready (backend %s: %s)", config.backend.name,
             ", ".join(config.backend.uris))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: finishing %d request(s) in flight", service.in_flight())
    await listener.stop()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(service.drain(), 20.0)
    backend.close()
    return 0


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.version:
        from guestfence import __version__

        print(f"guestfenced {__version__}")
        sys.exit(0)
    setup_logging(args.debug or 0, True)
    try:
        config = load_config(args.config)
        level = args.debug if args.debug is not None else config.debug
        foreground = args.foreground or config.foreground
        _key_and_algorithms(config)  # fail before forking: the operator sees the message
        check_pidfile(args.pidfile)
        if not (args.wait or config.wait_for_init):
            # Probe the backend now, so a wrong URI is reported here, before forking and
            # before any pid file exists. The real connections are opened after the fork.
            make_backend(config).close()
        if not foreground:
            daemonize()
        setup_logging(level, foreground)
        write_pidfile(args.pidfile)
    except (ConfigError, KeyFileError, BackendError, GuestfenceError, OSError) as e:
        print(f"guestfenced: {e}", file=sys.stderr)
        sys.exit(1)
    started = time.monotonic()
    try:
        code = asyncio.run(serve(config, args.wait or config.wait_for_init))
    except GuestfenceError as e:
        log.error("%s", e)
        code = 1
    finally:
        with contextlib.suppress(OSError):
            os.unlink(args.pidfile)
    log.info("guestfenced exited after %.1f s", time.monotonic() - started)
    sys.exit(code)


if __name__ == "__main__":
    main()
