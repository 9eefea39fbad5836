"""Shared set-up for the benchmarks in bench/: namespaces, daemons, hyperfine, results.

Each benchmark builds a private lab (a temporary folder with a key and a
libvirt test-driver node file, plus network namespaces with multicast on
``lo``), starts our daemon and/or the Debian C ``fence_virtd`` in it, measures,
and tears everything down in ``finally`` -- also on Ctrl-C and SIGTERM.

Nothing leaves loopback or the lab's own namespaces: both daemons listen on
``lo`` inside a namespace and every client runs inside one too.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from guestfence.lab.cfence import FENCE_XVM, CDaemon, missing_tools, write_c_config, write_key
from guestfence.lab.netns import Namespace, remove_stale_namespaces, run_prefix
from guestfence.lab.ourdaemon import OurDaemon, daemon_config_text, venv_tool
from guestfence.lab.testdriver import default_guests, write_node_xml

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
NS_PREFIX = "gfb-"
"""Namespaces of benchmark runs: ``gfb-<pid>-<n>-<tag>`` (tests use ``gft-``)."""

Impl = Literal["c", "ours"]
IMPLS: tuple[Impl, Impl] = ("c", "ours")
LABEL = {"c": "C", "ours": "ours"}
BLACKHOLE_ADDR = "10.231.0.99"
BLACKHOLE_NET = "10.231.0.0/24"


def client_exe(impl: Impl) -> str:
    """The fence_xvm binary of one implementation (ours: the venv's console script)."""
    return FENCE_XVM if impl == "c" else venv_tool("fence_xvm")


def pairing(client: Impl, daemon: Impl) -> str:
    """``"C client / ours daemon"``-style label."""
    return f"{LABEL[client]} client / {LABEL[daemon]} daemon"


# -- the lab ---------------------------------------------------------------------


class Lab:
    """Temporary folder, key, node file and namespaces; everything removed by :meth:`close`."""

    def __init__(self, guests: int = 3) -> None:
        self._stack = contextlib.ExitStack()
        self.tmp = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="gfbench-")))
        self.key = write_key(self.tmp / "fence_xvm.key")
        self.uri = write_node_xml(self.tmp / "node.xml", default_guests(count=guests))
        self.daemon_pids: dict[str, int] = {}
        self.our_daemon: OurDaemon | None = None
        self.namespaces: dict[str, Namespace] = {}
        """Free for a benchmark to keep its namespaces by role."""

    def namespace(self, tag: str) -> Namespace:
        """A fresh namespace with multicast on ``lo``; destroyed (with its processes) on close."""
        ns = Namespace.create(run_prefix(NS_PREFIX) + tag)
        self._stack.callback(ns.destroy)
        return ns

    def client_argv(self, impl: Impl, *args: str) -> list[str]:
        """``fence_xvm -k KEY ARGS`` for one implementation."""
        return [client_exe(impl), "-k", str(self.key), *args]

    def start_daemon(self, impl: Impl, ns: Namespace, debug: int = 0) -> int:
        """Start our daemon or the C one (multicast on ``lo`` of ``ns``); return its pid."""
        if impl == "c":
            pid = self._start_c(ns)
        else:
            proc = self.start_ours(ns, debug).proc
            assert proc is not None
            pid = proc.pid
        self.daemon_pids[ns.name] = pid
        return pid

    def _start_c(self, ns: Namespace) -> int:
        cfg = write_c_config(self.tmp / f"c-{ns.name}.conf", "multicast", self.key, self.uri)
        daemon = CDaemon(cfg, ns)
        daemon.start()
        self._stack.callback(daemon.stop)
        assert daemon.pid is not None
        return daemon.pid

    def start_ours(self, ns: Namespace, debug: int = 0,
                   extra_args: Sequence[str] = ()) -> OurDaemon:
        """Our daemon (multicast on ``lo`` of ``ns``), ``extra_args`` added to its command line."""
        conf = self.tmp / f"ours-{ns.name}.conf"
        conf.write_text(daemon_config_text(str(self.key), [self.uri]))
        conf.chmod(0o600)
        daemon = OurDaemon(conf, namespace=ns, debug=debug, extra_args=extra_args)
        self._stack.callback(daemon.stop)
        daemon.start()
        self.our_daemon = daemon
        return daemon

    def blackhole(self, ns: Namespace) -> str:
        """An address routed from ``ns`` into a sink namespace whose SYNs are silently dropped.

        A veth ``bh0`` (no address) leads into the sink; a permanent neighbour
        entry means no ARP is needed, so every SYN leaves and is never answered.
        """
        sink = self.namespace("sink")
        ns.ip("link", "add", "bh0", "type", "veth", "peer", "name", "bh1", "netns", sink.name)
        ns.ip("link", "set", "bh0", "up")
        sink.ip("link", "set", "bh1", "up")
        ns.ip("route", "add", BLACKHOLE_NET, "dev", "bh0")
        ns.ip("neigh", "add", BLACKHOLE_ADDR, "lladdr", "02:00:00:00:00:99", "dev", "bh0",
              "nud", "permanent")
        return BLACKHOLE_ADDR

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def vm_hwm_kib(pid: int) -> int | None:
    """Peak resident set size (``VmHWM``) of a live process, in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# -- statistics ------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    """Summary of a list of durations, in milliseconds."""

    n: int
    median: float
    p90: float
    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Stats:
        ms = sorted(s * 1000.0 for s in seconds)
        if not ms:
            nan = math.nan
            return cls(0, nan, nan, nan, nan, nan)
        return cls(len(ms), statistics.median(ms), percentile(ms, 90), statistics.fmean(ms),
                   ms[0], ms[-1])


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Linear-interpolation percentile (the same definition as numpy's default)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    rank = (len(sorted_values) - 1) * pct / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (rank - lo)


# -- hyperfine -------------------------------------------------------------------


def hyperfine(
    ns: Namespace,
    commands: Mapping[str, Sequence[str]],
    json_path: Path,
    *,
    runs: int = 30,
    warmup: int = 3,
) -> dict[str, list[float]]:
    """``ip netns exec NS hyperfine -N --warmup W --runs R --export-json J -n NAME CMD ...``.

    Returns each command's run times (seconds) by name.  Fails if any command
    exits non-zero (hyperfine stops on the first failed run).
    """
    if shutil.which("hyperfine") is None:
        raise SystemExit("hyperfine is not installed (apt-get install hyperfine)")
    argv = ["hyperfine", "-N", "--style", "none", "--warmup", str(warmup), "--runs", str(runs),
            "--export-json", str(json_path)]
    for name, cmd in commands.items():
        argv += ["-n", name, shlex.join(cmd)]
    proc = ns.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"hyperfine failed (rc {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    data = json.loads(json_path.read_text())
    return {r["command"]: list(r["times"]) for r in data["results"]}


# -- timing single processes -----------------------------------------------------


@dataclass
class Timed:
    """One finished process: exit status, output and seconds since the common start."""

    rc: int
    stdout: str
    stderr: str
    seconds: float


def timed_run(ns: Namespace, argv: Sequence[str], timeout: float = 60.0) -> Timed:
    """Run ``argv`` inside ``ns`` and time it (includes the ``ip netns exec`` start-up)."""
    t0 = time.monotonic()
    proc = ns.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    return Timed(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0)


# -- checks and the summary ------------------------------------------------------


@dataclass
class Check:
    """A target: ``value`` (lower is better) must be below ``limit``."""

    name: str
    value: float
    limit: float
    unit: str = ""
    ok: bool | None = None

    def __post_init__(self) -> None:
        if self.ok is None:
            self.ok = not math.isnan(self.value) and self.value < self.limit

    @property
    def verdict(self) -> str:
        return "PASS" if self.ok else "FAIL"

    def line(self) -> str:
        return f"{self.verdict}  {self.name}: {self.value:.2f}{self.unit} (target < " \
               f"{self.limit:g}{self.unit})"


@dataclass
class Summary:
    """What a benchmark prints at the end and writes to ``bench/results/<name>.json``."""

    name: str
    lines: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, line: str) -> None:
        self.lines.append(line)

    def write(self) -> Path:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{self.name}.json"
        payload = {
            "benchmark": self.name,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine(),
            "checks": [asdict(c) for c in self.checks],
            "data": self.data,
        }
        plain = _nan_to_none(json.loads(json.dumps(payload, default=_jsonable)))
        path.write_text(json.dumps(plain, indent=2, allow_nan=False) + "\n")
        return path

    def print(self) -> None:
        bar = "=" * 72
        print(f"\n{bar}\nSUMMARY {self.name}  ({machine()['load']})")
        for line in self.lines:
            print(f"  {line}")
        for check in self.checks:
            print(f"  {check.line()}")
        print(bar)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def finish(self) -> int:
        """Print the summary, write the results file, and give the exit status (0: all met)."""
        self.print()
        print(f"results: {self.write()}")
        return 0 if self.ok else 1


def _jsonable(obj: object) -> object:
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    return str(obj)


def _nan_to_none(obj: Any) -> Any:
    """Strict JSON has no NaN: write null instead."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def machine() -> dict[str, str]:
    """Host facts worth recording next to timings (cores, load, kernel)."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {"cores": str(os.cpu_count()), "load": f"load {load}", "kernel": platform.release(),
            "python": platform.python_version()}


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain left-aligned text table."""
    cells = [[str(h) for h in headers], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.2f}"
    return str(value)


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


# -- running a benchmark ---------------------------------------------------------


def preflight() -> None:
    """Exit with a clear message when the machine cannot run the lab."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("root (network namespaces)")
    problems += missing_tools()
    if problems:
        raise SystemExit("benchmarks need: " + "; ".join(problems))
    remove_stale_namespaces(NS_PREFIX, include_own=True)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt, so every ``finally`` runs.

    SIGINT is set explicitly because a shell starting us in the background
    leaves it ignored.
    """
    old = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def run_benchmark(name: str, body: Callable[[Lab, Summary], None]) -> int:
    """Run ``body`` in a fresh :class:`Lab`; print and save the summary; return the exit code.

    0 when every check passed, 1 when one failed, 130 on interrupt (after cleanup).
    """
    preflight()
    summary = Summary(name)
    try:
        with _signals_as_interrupt(), Lab() as lab:
            body(lab, summary)
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted; lab cleaned up", file=sys.stderr)
        return 130
    return summary.finish()
