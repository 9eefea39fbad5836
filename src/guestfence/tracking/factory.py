"""From a tracked backend's config to a started tracker behind the daemon's Backend.

``backend = "static"``, ``"multi-libvirt"`` and ``"cpg"`` in fence_virt.conf
(see :mod:`guestfence.host.config_modes`). The cpg tracker comes from
:func:`guestfence.tracking.hostcluster.make_tracker`, imported only when asked for,
so a machine without corosync runs the other modes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from guestfence.errors import ConfigError

if TYPE_CHECKING:
    from guestfence.host.backends.tracked import TrackedBackend
    from guestfence.host.config import BackendConfig
    from guestfence.tracking.tracker import Tracker

TRACKED = ("static", "multi-libvirt", "cpg")


def make_tracker(config: BackendConfig, path: str = "fence_virt.conf") -> Tracker:
    """The tracker for ``config`` (not started); ConfigError when the mode is unavailable."""
    if config.name == "static":
        from guestfence.tracking.static import StaticTracker

        return StaticTracker.from_config(config)
    if config.name == "multi-libvirt":
        from guestfence.tracking.multilibvirt import MultiLibvirtTracker

        return MultiLibvirtTracker.from_config(config)
    if config.name == "cpg":
        try:
            from guestfence.tracking import hostcluster
        except ImportError as e:
            raise ConfigError(f"{path}: backend 'cpg' is not available in this build ({e}); "
                              "use backend = \"static\", \"multi-libvirt\" or \"libvirt\"") from e
        return hostcluster.make_tracker(config)
    raise ConfigError(f"{path}: backend {config.name!r} is not a tracked mode "
                      f"({', '.join(TRACKED)})")


def probe(config: BackendConfig, path: str = "fence_virt.conf") -> None:
    """Check before forking what can be checked without starting: the mode exists, and in
    static mode this host's libvirt answers (a wrong URI is reported on the terminal)."""
    make_tracker(config, path)
    if config.name == "static":
        from guestfence.host.backends.libvirt import LibvirtBackend

        LibvirtBackend(config.uris).close()


async def start_tracked_backend(config: BackendConfig, path: str) -> TrackedBackend:
    """Make and start the tracker (BackendError if it cannot start); the backend over it."""
    from guestfence.host.backends.tracked import TrackedBackend

    tracker = make_tracker(config, path)
    await tracker.start()
    return TrackedBackend(tracker)
