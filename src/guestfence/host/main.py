"""guestfenced: the host daemon (the fence_virtd role), reading the same fence_virt.conf.

    guestfenced [-F] [-f FILE] [-d LEVEL] [-p PIDFILE] [-w]

Start-up stops with a clear message, and nothing started, when the
configuration, the key file or the backend is not usable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import logging.handlers
import os
import signal
import sys
import time
from typing import Any

from guestfence.errors import BackendError, ConfigError, GuestfenceError, KeyFileError
from guestfence.host import sdnotify
from guestfence.host.acl import AccessMap
from guestfence.host.admin import DEFAULT_ADMIN_SOCKET, socket_path_problem
from guestfence.host.backends.tracked import TrackedBackend
from guestfence.host.cluster_access import ClusterAccess
from guestfence.host.config import (
    Config,
    MulticastListenerConfig,
    SerialListenerConfig,
    TcpListenerConfig,
    VsockListenerConfig,
    load_config,
)
from guestfence.host.keyring import KeyFileWatcher, KeyRing, KeySource, sources_from_config
from guestfence.host.keys import load_daemon_key
from guestfence.host.logformat import LOG_FORMATS, JsonFormatter
from guestfence.host.operations import start_operations
from guestfence.host.server import Backend, FenceService
from guestfence.virt.wire import HashType

DEFAULT_CONFIG = "/etc/fence_virt.conf"
DEFAULT_PIDFILE = "/run/guestfenced.pid"
INIT_RETRY_SECONDS = 5.0
KEY_POLL_SECONDS = 0.5

log = logging.getLogger("guestfenced")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="guestfenced",
        description="Host daemon answering fence_xvm / fence_virt requests "
        "(wire-compatible with fence_virtd).",
        epilog="Reads the fence_virt.conf format of fence_virtd; see guestfenced(8).",
    )
    p.add_argument("-F", dest="foreground", action="store_true",
                   help="stay in the foreground and log to stderr (otherwise: daemonise and "
                   "log to syslog, facility daemon)")
    p.add_argument("-f", dest="config", default=DEFAULT_CONFIG, metavar="FILE",
                   help=f"configuration file (default {DEFAULT_CONFIG})")
    p.add_argument("-d", dest="debug", type=int, default=None, metavar="LEVEL",
                   help="debug level (overrides the config's 'debug'); 1 and above also log "
                   "duplicates, silently ignored requests and each multicast round")
    p.add_argument("-p", dest="pidfile", default=DEFAULT_PIDFILE, metavar="PIDFILE",
                   help=f"pid file (default {DEFAULT_PIDFILE}); start-up stops if it names a "
                   "running guestfenced")
    p.add_argument("-w", dest="wait", action="store_true",
                   help="keep retrying backend and listener start-up every 5 s instead of "
                   "exiting (also 'wait_for_init' in the config); under systemd the service "
                   "counts as started meanwhile and its status says what it waits for")
    p.add_argument("-V", "--version", action="store_true", help="print the version and exit")
    p.add_argument("-c", "--configure", action="store_true",
                   help="ask for the settings (listener, interface, address, port, key file, "
                   "backend, libvirt URI; defaults detected on this host or read from the "
                   "existing file), show the result, then replace the -f file atomically "
                   "(the old one kept as FILE.bak) and offer to create the key; the role of "
                   "fence_virtd -c. Answers are read one per line when standard input is not "
                   "a terminal (an empty line takes the default)")
    p.add_argument("--defaults", action="store_true",
                   help="with --configure: ask nothing, take every default and write the file "
                   "(and the key, when missing)")
    p.add_argument("--admin-socket", metavar="PATH", type=_admin_socket_option,
                   help="root-only UNIX socket for 'guestfence status' (overrides the config's "
                   f"admin_socket; default {DEFAULT_ADMIN_SOCKET}; 'off' disables it)")
    p.add_argument("--metrics-port", metavar="PORT", type=_port_option,
                   help="serve Prometheus metrics over HTTP on this port at /metrics "
                   "(overrides the config's metrics_port; default: no metrics endpoint)")
    p.add_argument("--metrics-address", metavar="ADDRESS", type=_address_option,
                   help="address the metrics endpoint binds to (overrides the config's "
                   "metrics_address; default 127.0.0.1: only this host can scrape)")
    p.add_argument("--log-format", choices=LOG_FORMATS,
                   help="'text' (default) or 'json': one JSON object per line with timestamp, "
                   "level, logger, message and, for requests, listener, requester, target, "
                   "action, seqno, cluster, outcome and duration_ms (overrides the config's "
                   "log_format)")
    return p


def _admin_socket_option(value: str) -> str:
    problem = socket_path_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{value!r}: expected {problem}")
    return value


def _port_option(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a port 1..65535")
    return int(value)


def _address_option(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: expected an IPv4 or IPv6 address such as 127.0.0.1") from None


def with_options(config: Config, args: argparse.Namespace) -> Config:
    """The config with the day-2 options given on the command line applied."""
    overrides = {name: getattr(args, name) for name in
                 ("admin_socket", "metrics_port", "metrics_address", "log_format")
                 if getattr(args, name, None) is not None}
    return dataclasses.replace(config, **overrides) if overrides else config


def setup_logging(level: int, foreground: bool, log_format: str = "text") -> None:
    handler: logging.Handler
    if foreground or not os.path.exists("/dev/log"):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if log_format == "json" else
                             logging.Formatter("%(asctime)s %(levelname)s: %(message)s"))
    else:
        handler = logging.handlers.SysLogHandler(
            "/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON
        )
        handler.setFormatter(JsonFormatter("guestfenced[%(process)d]: ")
                             if log_format == "json" else
                             logging.Formatter("guestfenced[%(process)d]: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if level > 0 else logging.INFO)


def make_backend(config: Config) -> Backend:
    from guestfence.host.backends.libvirt import LibvirtBackend

    if config.backend.name != "libvirt":
        raise ConfigError(f"{config.path}: backend {config.backend.name!r} is a tracked mode "
                          "(open_backend starts it)")
    return LibvirtBackend(config.backend.uris, config.backend.name_mode,
                          claim_shut_off=config.backend.claim_shut_off)


async def open_backend(config: Config) -> Backend:
    """The libvirt backend, or a started tracker behind a TrackedBackend (the host modes)."""
    if config.backend.name == "libvirt":
        return await asyncio.to_thread(make_backend, config)
    from guestfence.tracking.factory import start_tracked_backend

    return await start_tracked_backend(config.backend, config.path)


def probe_backend(config: Config) -> None:
    """What can be checked before forking: a wrong URI or an unavailable mode."""
    if config.backend.name == "libvirt":
        make_backend(config).close()
    else:
        from guestfence.tracking.factory import probe

        probe(config.backend, config.path)


def _key_and_algorithms(config: Config) -> tuple[bytes, HashType, HashType]:
    listener = config.listener
    if isinstance(listener, SerialListenerConfig):
        return b"", HashType.NONE, HashType.NONE
    auth = HashType.from_name(listener.auth)
    min_hash = HashType.from_name(listener.hash)
    key = b""
    if not config.clusters and (auth is not HashType.NONE or min_hash is not HashType.NONE):
        key = load_daemon_key(listener.key_file)
    return key, auth, min_hash


def _key_sources(config: Config) -> list[KeySource]:
    """The key files the listener accepts: one per cluster, or the listener's own."""
    listener = config.listener
    if isinstance(listener, SerialListenerConfig):
        return []  # no cryptography on the serial path
    if not config.clusters and listener.hash == "none" and listener.auth == "none":
        return []
    return sources_from_config(config.clusters, listener.key_file)


def load_keyring(config: Config, strict: bool) -> KeyRing:
    sources = _key_sources(config)
    return KeyRing.load(sources, strict=strict) if sources else KeyRing.keyless()


async def watch_keys(service: FenceService, config: Config, reload_now: asyncio.Event) -> None:
    """Reload the keys when a key file changes (checked every KEY_POLL_SECONDS) or on SIGHUP,
    so that a retired key stops working within a second, without a restart."""
    sources = _key_sources(config)
    watcher = KeyFileWatcher(sources)
    retry = False
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reload_now.wait(), KEY_POLL_SECONDS)
        forced = reload_now.is_set()
        reload_now.clear()
        try:
            if not watcher.changed() and not forced and not retry:
                continue
            ring = await asyncio.to_thread(KeyRing.load, sources, strict=False)
            retry = False
        except Exception:  # the watcher must outlive any surprise, or rotation stops
            log.exception("reloading the keys failed; trying again in %.1f s", KEY_POLL_SECONDS)
            retry = True
            continue
        ring.adopt_hints(service.keyring)
        service.keyring = ring
        log.info("keys reloaded%s: %s", " (SIGHUP)" if forced else "",
                 "; ".join(ring.describe()) or "none")


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
            backend = await open_backend(config)
            break
        except BackendError as e:
            if not wait:
                raise
            log.error("%s; retrying in %.0f s", e, INIT_RETRY_SECONDS)
            # -w: systemd may go on booting; the status says what is awaited
            sdnotify.notify("READY=1", f"STATUS=waiting for the backend: {e}")
            await asyncio.sleep(INIT_RETRY_SECONDS)
    for warning in config.warnings:
        log.warning("%s", warning)
    service = FenceService(backend, AccessMap(config.groups), key, auth, min_hash)
    service.keyring = load_keyring(config, strict=True)
    service.cluster_access = ClusterAccess(config.clusters)
    for described in service.keyring.describe():
        log.info("key %s", described)  # fingerprints only: keys are never logged
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
            sdnotify.notify("READY=1", f"STATUS=waiting for the listener: {e}")
            await asyncio.sleep(INIT_RETRY_SECONDS)
    try:
        operations = await start_operations(config, service)
    except GuestfenceError:
        await listener.stop()
        backend.close()
        raise
    stop = asyncio.Event()
    reload_keys = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_keys.set)
    # after the handlers: whoever waits for this line may send SIGTERM at once, and the
    # stop must still remove the admin socket and finish the requests in flight
    log.info("guestfenced ready (backend %s: %s)", config.backend.name,
             ", ".join(config.backend.uris))
    key_watch = asyncio.ensure_future(watch_keys(service, config, reload_keys))
    # only now: systemd may send SIGTERM as soon as it hears READY
    sdnotify.notify("READY=1", f"STATUS=serving ({config.backend.name}: "
                    f"{', '.join(config.backend.uris)})")
    await stop.wait()
    sdnotify.notify("STOPPING=1", "STATUS=stopping: finishing the requests in flight")
    key_watch.cancel()
    log.info("stopping: finishing %d request(s) in flight", service.in_flight())
    await operations.stop()
    await listener.stop()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(service.drain(), 20.0)
    backend.close()
    if isinstance(backend, TrackedBackend):
        await backend.tracker.stop()
    return 0


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.version:
        from guestfence import __version__

        print(f"guestfenced {__version__}")
        sys.exit(0)
    if args.configure or args.defaults:
        if not args.configure:
            build_parser().error("--defaults goes with --configure")
        from guestfence.host.configure_prompt import run_configure

        sys.exit(run_configure(args.config, use_defaults=args.defaults))
    setup_logging(args.debug or 0, True, args.log_format or "text")
    try:
        config = load_config(args.config)
        level = args.debug if args.debug is not None else config.debug
        foreground = args.foreground or config.foreground
        # fail before forking: the operator sees the message (the listener's key file is
        # the ring's only source when there is no clusters block)
        load_keyring(config, strict=True)
        check_pidfile(args.pidfile)
        if not (args.wait or config.wait_for_init):
            # Probe the backend now, so a wrong URI is reported here, before forking and
            # before any pid file exists. The real connections are opened after the fork.
            probe_backend(config)
        if not foreground:
            daemonize()
        config = with_options(config, args)
        setup_logging(level, foreground, config.log_format)
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
