"""``guestfence target serve``: our user-space iSCSI target, from flags or a YAML file.

YAML form (every key optional but ``luns``; flags given on the command line win)::

    iqn: iqn.2026-11.org.guestfence:disk
    portal: 127.0.0.1:3260
    chap: user:secret            # or {user: ..., secret: ...}
    mutual_chap: tuser:tsecret
    luns:
      - path: /var/lib/guestfence/lun1.img
        size: 64M                # created sparse when the file is missing
      - /var/lib/guestfence/lun2.img
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from guestfence.errors import ConfigError

DEFAULT_IQN = "iqn.2026-11.org.guestfence:target"
DEFAULT_PORTAL = "127.0.0.1:3260"
DEFAULT_SIZE = 64 * 1024 * 1024
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass
class ServeConfig:
    iqn: str = DEFAULT_IQN
    host: str = "127.0.0.1"
    port: int = 3260
    luns: list[tuple[Path, int | None]] = field(default_factory=list)  # (path, size)
    chap: tuple[str, str] | None = None
    mutual_chap: tuple[str, str] | None = None


def parse_size(text: str | int) -> int:
    if isinstance(text, int):
        return text
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in _UNITS and t[-1:] else ""
    try:
        n = int(t[: len(t) - len(unit)]) * _UNITS[unit]
    except ValueError:
        raise ConfigError(f"bad size {text!r} (e.g. 64M, 1G)") from None
    if n < 512 or n % 512:
        raise ConfigError(f"size {text!r}: must be a positive multiple of 512 bytes")
    return n


def parse_portal(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"bad portal {text!r}: expected ADDR:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def parse_credentials(value: Any, what: str) -> tuple[str, str]:
    if isinstance(value, dict):
        user, secret = str(value.get("user", "")), str(value.get("secret", ""))
    else:
        user, _, secret = str(value).partition(":")
    if not user or not secret:
        raise ConfigError(f"{what}: expected USER:SECRET")
    return user, secret


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("target", help="our user-space iSCSI target (for labs and tests)",
                       description="A user-space iSCSI target with file-backed LUNs and "
                       "SCSI-3 persistent reservations.")
    tsub = p.add_subparsers(dest="target_command", metavar="ACTION", required=True)
    s = tsub.add_parser("serve", help="serve LUNs until SIGTERM",
                        description="Serve file-backed LUNs 1..N over iSCSI until SIGTERM.")
    s.add_argument("--config", type=Path, help="YAML file (iqn, portal, luns, chap)")
    s.add_argument("--lun", action="append", default=[], type=Path, metavar="PATH",
                   help="backing file of the next LUN (LUN 1, 2, ...); repeatable")
    s.add_argument("--size", help="size of backing files to create if missing (default 64M)")
    s.add_argument("--iqn", help=f"target name (default {DEFAULT_IQN})")
    s.add_argument("--portal", help=f"ADDR:PORT to listen on (default {DEFAULT_PORTAL})")
    s.add_argument("--chap", metavar="USER:SECRET", help="require CHAP from initiators")
    s.add_argument("--mutual-chap", metavar="USER:SECRET",
                   help="the target's own credentials for mutual CHAP")
    s.add_argument("--ready-file", type=Path, help="write the portal here once listening")
    s.add_argument("--logout-grace", type=float, default=2.0, metavar="SECONDS",
                   help="on SIGTERM, how long initiators get to log out (default 2)")
    s.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    s.add_argument("--sync", choices=("always", "on-flush"), default="always",
                   help="always (default): every WRITE is on disk (fdatasync) before it "
                   "completes; on-flush: only on SYNCHRONIZE CACHE and FUA writes, as a disk "
                   "with a write cache (WCE=1) behaves")


def load_config(args: argparse.Namespace) -> ServeConfig:
    raw: dict[str, Any] = {}
    if args.config is not None:
        import yaml

        try:
            loaded = yaml.safe_load(args.config.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{args.config}: {e}") from e
        if not isinstance(loaded, dict):
            raise ConfigError(f"{args.config}: expected a mapping")
        raw = loaded
    cfg = ServeConfig()
    cfg.iqn = args.iqn or str(raw.get("iqn", DEFAULT_IQN))
    cfg.host, cfg.port = parse_portal(args.portal or str(raw.get("portal", DEFAULT_PORTAL)))
    default_size = parse_size(args.size) if args.size else None
    if args.lun:
        cfg.luns = [(path, default_size) for path in args.lun]
    else:
        for item in raw.get("luns") or []:
            if isinstance(item, dict) and "path" in item:
                size = item.get("size")
                cfg.luns.append((Path(item["path"]),
                                 parse_size(size) if size is not None else default_size))
            elif isinstance(item, str):
                cfg.luns.append((Path(item), default_size))
            else:
                raise ConfigError(f"bad LUN entry {item!r}: expected a path or {{path, size}}")
    if not cfg.luns:
        raise ConfigError("no LUNs: give --lun PATH or luns: in --config")
    chap = args.chap or raw.get("chap")
    cfg.chap = parse_credentials(chap, "chap") if chap else None
    mutual = args.mutual_chap or raw.get("mutual_chap")
    cfg.mutual_chap = parse_credentials(mutual, "mutual_chap") if mutual else None
    return cfg


def prepare_files(cfg: ServeConfig) -> None:
    """Create missing backing files, sparse; existing ones are left as they are."""
    for path, size in cfg.luns:
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "xb") as f:
            f.truncate(size or DEFAULT_SIZE)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    cfg = load_config(args)
    prepare_files(cfg)
    return asyncio.run(_serve(cfg, args.ready_file, args.logout_grace, args.sync))


async def _serve(cfg: ServeConfig, ready_file: Path | None, grace: float,
                 sync: str = "always") -> int:
    from guestfence.target.login import LoginConfig
    from guestfence.target.server import Target, TargetServer, file_lun_factory, serve

    numbers = list(range(1, len(cfg.luns) + 1))
    luns = {n: file_lun_factory(path, n, cfg.iqn, lambda: list(numbers), sync)
            for n, (path, _) in zip(numbers, cfg.luns, strict=True)}
    target = Target(LoginConfig(cfg.iqn, chap=cfg.chap, mutual_chap=cfg.mutual_chap), luns)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def ready(server: TargetServer) -> None:
        print(f"ready {server.portal} {cfg.iqn}", flush=True)
        if ready_file is not None:
            tmp = ready_file.with_name(ready_file.name + ".tmp")
            tmp.write_text(f"{server.portal}\n")
            tmp.replace(ready_file)  # readers never see half a line

    await serve(target, cfg.host, cfg.port, stop, ready, grace=grace)
    return 0
