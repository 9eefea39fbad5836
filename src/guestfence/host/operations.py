"""Starting and stopping guestfenced's day-2 interfaces: the admin socket and the metrics endpoint.

The admin socket is on by default. When the *default* path cannot be used (it
is served by another running guestfenced, as with several daemons on one lab
machine, or /run is not writable), this one runs without it and says so: an
admin view is not worth refusing to fence. A path the operator chose must work
or start-up fails. The metrics endpoint is off unless a port is configured.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from guestfence.errors import GuestfenceError
from guestfence.host.admin import (
    ADMIN_SOCKET_OFF,
    DEFAULT_ADMIN_SOCKET,
    AdminServer,
)
from guestfence.host.config import Config
from guestfence.host.metrics import MetricsEndpoint
from guestfence.host.server import FenceService
from guestfence.host.status import DaemonFacts, describe_listener, status_answerer

log = logging.getLogger("guestfenced")


@dataclass
class Operations:
    admin: AdminServer | None
    metrics: MetricsEndpoint | None

    async def stop(self) -> None:
        if self.admin is not None:
            await self.admin.stop()
        if self.metrics is not None:
            self.metrics.stop()


async def start_operations(config: Config, service: FenceService) -> Operations:
    """Start what the config asks for; GuestfenceError when a requested part cannot start."""
    facts = DaemonFacts(
        config_path=config.path,
        listeners=[describe_listener(config.listener)],
        log_format=config.log_format,
    )
    metrics = None
    if config.metrics_port is not None:
        metrics = MetricsEndpoint(service.telemetry, config.metrics_address, config.metrics_port)
        try:
            metrics.start()
        except OSError as e:
            raise GuestfenceError(f"cannot serve metrics on {config.metrics_address} port "
                                  f"{config.metrics_port}: {e.strerror or e}") from e
        facts.metrics_url = metrics.url
        log.info("metrics on %s", metrics.url)
    path = config.admin_socket or DEFAULT_ADMIN_SOCKET
    admin = None
    if path != ADMIN_SOCKET_OFF:
        admin = AdminServer(path, status_answerer(service, facts))
        facts.admin_socket = path
        try:
            try:
                await admin.start()
            except OSError as e:
                raise GuestfenceError(f"cannot create the admin socket {path}: "
                                      f"{e.strerror or e}") from e
        except GuestfenceError as e:
            if config.admin_socket is None:  # the default path: not worth refusing to fence
                log.warning("%s; running without an admin socket (give this daemon one with "
                            "admin_socket or --admin-socket)", e)
                admin, facts.admin_socket = None, None
            else:
                if metrics is not None:
                    metrics.stop()
                raise
    return Operations(admin, metrics)
