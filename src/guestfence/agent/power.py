"""The generic power driver: input, validation, actions and exit codes for power agents.

An agent supplies an :class:`AgentSpec` and a factory that builds a
:class:`PowerDevice` from the validated :class:`Options`; :func:`run_agent`
does everything else the way fence-agents' library does (spec §1), with the
deliberate improvements listed in the docstrings below (off is always verified,
multi-plug states must all agree, false flags are unset, no list "NOTICE").

Exit codes: 0 success, 1 any failure, 2 only for ``status`` when the plug
is off. A single-plug ``monitor`` answers 0 for a reachable device whatever
its state: Pacemaker fails the stonith resource on any other code. Results go
to stdout, log lines to stderr.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import Literal, Protocol, TextIO, runtime_checkable

from guestfence.agent.params import UsageError
from guestfence.agent.standard import (
    AgentParamTable,
    AgentSpec,
    Options,
    RunLogging,
    agent_params,
    apply_defaults,
    normalise_action,
    validate,
)
from guestfence.errors import GuestfenceError

State = Literal["on", "off"]
log = logging.getLogger("guestfence.agent")

USAGE_HINT = "Please use '-h' for usage"
EC_STATUS = "Failed: Unable to obtain correct plug status or plug is not available"
EC_WAITING_ON = "Failed: Timed out waiting to power ON"
EC_WAITING_OFF = "Failed: Timed out waiting to power OFF"


class PowerDevice(Protocol):
    """What every power agent implements. Methods may raise GuestfenceError.

    ``status`` returns "on" or "off" (any case); anything else means unknown.
    Single-plug agents (no ``has_plug``) receive "" as the plug.
    """

    def status(self, plug: str) -> str: ...

    def set_power(self, plug: str, state: State) -> None: ...

    def close(self) -> None: ...


# Optional capabilities, detected with isinstance() on the device.
@runtime_checkable
class SupportsList(Protocol):
    def list(self) -> dict[str, str]: ...  # plug id -> alias ("" if none)


@runtime_checkable
class SupportsListStatus(Protocol):
    def list_status(self) -> dict[str, tuple[str, str]]: ...  # id -> (alias, state)


@runtime_checkable
class SupportsMonitor(Protocol):
    def monitor(self) -> None: ...


@runtime_checkable
class SupportsRebootCycle(Protocol):
    def reboot_cycle(self, plug: str) -> None: ...  # for method=cycle


class AgentFailure(GuestfenceError):
    """Ends the run with exit code 1; the message is logged at ERROR."""


class Terminated(BaseException):
    """SIGTERM arrived (Pacemaker's action timeout): fail cleanly, device closed.

    A BaseException, like KeyboardInterrupt, so that neither the driver's retry
    logic nor an agent's ``except Exception`` can swallow it.
    """


def _state(raw: object) -> str:
    text = str(raw).strip().lower()
    return text if text in ("on", "off") else "unknown"


class PowerDriver:
    """The state machine of §1.7 for one validated invocation."""

    def __init__(self, spec: AgentSpec, device: PowerDevice, options: Options, out: TextIO,
                 sleep: Callable[[float], object]) -> None:
        self.spec, self.device, self.options, self.out = spec, device, options, out
        self._sleep = sleep
        # single-plug agents have one implicit plug, addressed as ""
        self.plugs = options.plugs or ("",)

    def run(self) -> int:
        action = self.options.action
        if action in ("list", "list-status"):
            return self.list(with_status=action == "list-status")
        if action == "monitor":
            return self.monitor()
        states = self.states()
        unknown = {p: s for p, s in states.items() if s == "unknown"}
        if unknown:
            log.debug("plug states: %s", states)
            raise AgentFailure(EC_STATUS)
        if action == "status":
            on = "on" in states.values()  # "on" if any plug is on (§1.7 step 3)
            self.say(f"Status: {'ON' if on else 'OFF'}")
            return 0 if on else 2
        if action == "reboot":
            return self.reboot(states)
        target: State = "on" if action == "on" else "off"
        # Multi-plug: "already" only when every plug is in the target state (fence-agents
        # would say "Already ON" when any single plug is on).
        forced = self.spec.force_on if target == "on" else self.spec.force_off
        if all(s == target for s in states.values()) and not forced:
            self.say(f"Success: Already {target.upper()}")
            return 0
        if target == "off":
            if not self.power("off", attempts=1):
                raise AgentFailure(EC_WAITING_OFF)
        elif not self.power("on", attempts=1 + self.options.number("retry_on")):
            raise AgentFailure(EC_WAITING_ON)
        self.say(f"Success: Powered {target.upper()}")
        return 0

    def say(self, line: str) -> None:
        self.out.write(line + "\n")

    def sleep(self, seconds: int) -> None:
        if seconds > 0:
            self._sleep(seconds)

    def states(self) -> dict[str, str]:
        return {plug: _state(self.device.status(plug)) for plug in self.plugs}

    def wait_for(self, target: State) -> bool:
        """Poll every stonith_status_sleep s, at most power_timeout polls (0: no limit)."""
        limit = self.options.number("power_timeout")
        polls = 0
        while True:
            states = self.states()
            if all(s == target for s in states.values()):
                return True
            polls += 1
            log.debug("poll %d: waiting for %s, states %s", polls, target, states)
            if limit and polls >= limit:
                return False
            self.sleep(self.options.number("stonith_status_sleep"))

    def power(self, target: State, attempts: int) -> bool:
        """Switch every plug, then verify by polling. Errors of one "on" attempt are
        retried like a timeout; errors while switching off end the run."""
        error: GuestfenceError | None = None
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                log.warning("Retrying power %s (attempt %d of %d)", target, attempt, attempts)
            try:
                for plug in self.plugs:
                    self.device.set_power(plug, target)
                    self.sleep(self.options.number("power_wait"))
                if self.wait_for(target):
                    return True
            except GuestfenceError as e:
                if target == "off":
                    raise
                log.warning("Power on attempt %d failed: %s", attempt, e)
                error = e
        if error is not None:
            raise error
        return False

    def reboot(self, states: dict[str, str]) -> int:
        if self.options.get("method") == "cycle":
            return self.cycle()
        # force_off: "off" in status is not proof of off (e.g. a suspended VM): switch anyway
        already_off = all(s == "off" for s in states.values()) and not self.spec.force_off
        if not already_off and not self.power("off", attempts=1):
            raise AgentFailure(EC_WAITING_OFF)  # "on" is never attempted
        # The node is fenced once off is verified; the on phase is best effort (§1.7).
        # It gets retry_on attempts (at least one), like fence-agents: a second full
        # power_timeout here could push a reboot past Pacemaker's action timeout.
        try:
            powered_on = self.power("on", attempts=max(1, self.options.number("retry_on")))
        except GuestfenceError as e:
            log.warning("%s", e)
            powered_on = False
        if not powered_on:
            log.error("Timed out waiting to power ON")
        self.say("Success: Rebooted")
        return 0

    def cycle(self) -> int:
        if not isinstance(self.device, SupportsRebootCycle):
            raise AgentFailure("Failed: this device does not support method=cycle")
        attempts = 1 + self.options.number("retry_on")
        for plug in self.plugs:
            for attempt in range(1, attempts + 1):
                try:
                    self.device.reboot_cycle(plug)
                    break
                except GuestfenceError as e:
                    log.warning("Reboot cycle attempt %d failed: %s", attempt, e)
            else:
                raise AgentFailure("Failed: Connection timed out (reboot cycle)")
        self.say("Success: Rebooted")
        return 0

    def monitor(self) -> int:
        if isinstance(self.device, SupportsMonitor):
            self.device.monitor()
        elif self.spec.has_plug:
            if not isinstance(self.device, SupportsList):
                raise AgentFailure("Failed: the agent implements neither monitor nor list")
            self.device.list()  # a working listing is a healthy device
        else:
            state = _state(self.device.status(""))
            if state == "unknown":
                raise AgentFailure(EC_STATUS)
        return 0

    def list(self, with_status: bool) -> int:
        sep = self.options.separator
        if with_status and isinstance(self.device, SupportsListStatus):
            rows = {k: (alias, _state(s)) for k, (alias, s) in self.device.list_status().items()}
        else:
            if not isinstance(self.device, SupportsList):
                raise AgentFailure("Failed: the agent does not implement list")
            rows = {k: (alias, "") for k, alias in self.device.list().items()}
            if with_status:
                rows = {k: (alias, self._plug_state(k)) for k, (alias, _) in rows.items()}
        for plug, (alias, state) in rows.items():
            fields = _list_fields(str(plug), str(alias))
            if fields is None:
                continue
            if with_status:
                fields.append(state.upper() if state in ("on", "off") else "UNKNOWN")
            self.say(sep.join(fields))
        return 0

    def _plug_state(self, plug: str) -> str:
        try:
            return _state(self.device.status(plug))
        except GuestfenceError as e:
            log.warning("Status of plug '%s' unavailable: %s", plug, e)
            return "unknown"


# Pacemaker drops whole list lines containing these words (§1.10).
_POISON = ("invalid", "variable")


def _list_fields(plug: str, alias: str) -> list[str] | None:
    """The [id, alias] of one list line, made safe for Pacemaker's parser."""
    plug, alias = (" ".join(x.splitlines()) for x in (plug, alias))  # one plug per line
    if any(w in plug.lower() for w in _POISON):
        log.warning("Skipping plug '%s' in list output: Pacemaker ignores lines containing "
                    "'invalid' or 'variable'", plug)
        return None
    if any(w in alias.lower() for w in _POISON):
        log.warning("Dropping alias '%s' of plug '%s' from list output", alias, plug)
        alias = ""
    return [plug, alias]


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated("Failed: Received SIGTERM (Pacemaker's action timeout?); giving up")


def run_agent(
    spec: AgentSpec,
    make_device: Callable[[Options], PowerDevice],
    argv: Sequence[str] | None = None,
    stdin: TextIO | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run one agent invocation and return its exit code.

    ``argv`` defaults to ``sys.argv[1:]``; with no argument at all the options are
    read from ``stdin`` instead (never both). ``clock``/``sleep`` are injectable so
    that tests never sleep; the delay is measured from the call of run_agent.
    """
    started = clock()

    def wait_delay(delay: int) -> None:
        # measured from the start, so time spent parsing counts towards the delay
        remaining = started + delay - clock()
        if remaining > 0:
            log.info("Delay %d second(s) before contacting the fence device", delay)
            sleep(remaining)

    args = sys.argv[1:] if argv is None else list(argv)
    out = stdout if stdout is not None else sys.stdout
    logs = RunLogging(stderr if stderr is not None else sys.stderr)
    # signal handlers can only be installed from the main thread
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main else None
    try:
        code = _run(spec, make_device, args, stdin, out, logs,
                    os.environ if environ is None else environ, wait_delay, sleep)
        out.flush()
        return code
    except Terminated as e:  # the device, if any, has been closed on the way out
        log.error("%s", e)
        return 1
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)
        logs.close()


def _run(spec: AgentSpec, make_device: Callable[[Options], PowerDevice], args: list[str],
         stdin: TextIO | None, out: TextIO, logs: RunLogging, environ: Mapping[str, str],
         wait_delay: Callable[[int], None], sleep: Callable[[float], object]) -> int:
    try:
        parsed = AgentParamTable(agent_params(spec)).parse(args, stdin,
                                                           {"h": "help", "V": "version"})
    except UsageError as e:
        return _usage_error(e)
    values = apply_defaults(spec, parsed.values)
    logs.configure(values)
    for warning in parsed.warnings:
        log.warning("%s", warning)
    if parsed.help or "help" in values:
        from guestfence.agent.manpage import usage_text

        out.write(usage_text(spec))
        return 0
    if parsed.version or "version" in values:
        from guestfence import __version__

        out.write(f"{spec.name} (guestfence) {__version__}\n")
        return 0
    try:
        action = normalise_action(spec, values["action"])
        if action in ("metadata", "manpage"):
            from guestfence.agent.manpage import metadata_of
            from guestfence.agent.metadata import render_metadata

            out.write(render_metadata(metadata_of(spec)))
            return 0
        options = validate(spec, parsed.values, action, environ)
    except UsageError as e:
        return _usage_error(e)
    if action == "validate-all":
        return 0  # never contacts the device
    log.debug("%s: %s %s", spec.name, action, ", ".join(options.plugs) or "(no plug)")
    device: PowerDevice | None = None
    try:
        if action in ("off", "reboot"):
            wait_delay(options.number("delay"))  # before the first device contact (§1.8)
        device = make_device(options)
        return PowerDriver(spec, device, options, out, sleep).run()
    except GuestfenceError as e:
        text = str(e)
        log.error("%s", text if text.startswith("Failed") else f"Failed: {text}")
    except Exception as e:  # a bug in the agent must still end as a clean exit 1
        log.debug("unexpected error", exc_info=True)
        log.error("Failed: unexpected %s: %s", type(e).__name__, e)
    finally:
        if device is not None:
            _close(device)
    return 1


def _usage_error(error: UsageError) -> int:
    log.error("%s", error)
    log.error(USAGE_HINT)
    return 1


def _close(device: PowerDevice) -> None:
    try:
        device.close()
    except Exception as e:  # closing must not turn a result into a failure
        log.warning("Closing the connection to the fence device failed: %s", e)
