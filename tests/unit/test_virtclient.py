"""fence_xvm / fence_virt input handling: argv, stdin, validation messages, exit codes."""

from __future__ import annotations

import io

import pytest

from guestfence.agent.params import ParamTable
from guestfence.agents import virtclient, virtparams


def run(prog: str, argv: list[str], stdin: str = "") -> int:
    return virtclient.run(prog, argv, io.StringIO(stdin))


def xvm_values(argv: list[str], stdin: str = "") -> dict[str, str]:
    table = ParamTable(virtparams.XVM_PARAMS)
    parsed = table.parse(argv, io.StringIO(stdin), {"h": "help", "?": "help", "V": "version"})
    return parsed.values


def test_stdin_values_keep_spaces_and_strip_quotes() -> None:
    values = xvm_values([], 'plug=my vm\naction="status"\n# comment\n\n  timeout = 5 \n')
    assert values == {"plug": "my vm", "action": "status", "timeout": "5"}


def test_stdin_aliases_and_case() -> None:
    values = xvm_values([], "OPTION=off\nPort=vm1\nKEY-FILE=/k\n")
    assert values == {"action": "off", "port": "vm1", "key_file": "/k"}


def test_stdin_is_ignored_when_argv_given() -> None:
    assert xvm_values(["-o", "status"], "plug=vm1\n") == {"action": "status"}


def test_argv_getopt_forms() -> None:
    assert xvm_values(["-d", "-d", "-ostatus", "-Hvm", "-u"]) == {
        "debug": "2", "action": "status", "port": "vm", "use_uuid": "1"}
    table = ParamTable(virtparams.VIRT_PARAMS)
    assert table.parse(["-S"], None, {}).values == {"vsock": "2"}
    assert table.parse(["-S5", "-T", "::1"], None, {}).values == {"vsock": "5", "ipaddr": "::1"}


def test_unknown_stdin_key_warns(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("fence_xvm", [], "action=validate-all\nplug=x\nbogus=1\nnodename=n1\n") == 0
    err = capsys.readouterr().err
    assert "Parse error: Ignoring unknown option 'bogus=1'" in err
    assert "nodename" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-o", "off"], "No domain specified!"),
        (["-o", "bogus", "-H", "x"], "Unsupported operation: bogus"),
        (["-o", "status", "-H", "x", "-t", "0"], "Invalid timeout '0'"),
        (["-o", "status", "-H", "x", "-p", "70000"], "Invalid ipport '70000'"),
        (["-o", "status", "-H", "x", "-c", "md5"], "unknown hash 'md5'"),
        (["-o", "status", "-H", "x", "-i", "ipx"], "Invalid IP family"),
        (["-o", "status", "-H", "a" * 64], "(File name too long)"),
        (["-o", "status", "-H", "x", "-k", "/nonexistent/key"], "Invalid key file"),
        (["-o", "status", "-H", "a", "-n", "b"], "may not be specified more than once"),
        (["-M"], "unknown option '-M'"),
        (["-o"], "needs a value"),
    ],
)
def test_validation_failures_exit_1(argv: list[str], message: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert run("fence_xvm", argv) == 1
    err = capsys.readouterr().err
    assert message in err
    assert "usage: fence_xvm [args]" in err


def test_same_domain_twice_is_accepted() -> None:
    assert run("fence_xvm", ["-o", "validate-all", "-H", "a", "-n", "a"]) == 0


def test_validate_all_needs_a_domain_but_prints_no_usage(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert run("fence_xvm", [], "action=validate-all\n") == 1
    err = capsys.readouterr().err
    assert "No domain specified!" in err
    assert "usage" not in err


def test_list_and_monitor_need_no_domain() -> None:
    # validate-all stands in for "would run": only the validation step is exercised here
    for action in ("list", "monitor", "list-status"):
        inv = virtclient._validate("fence_xvm", ParamTable(virtparams.XVM_PARAMS),
                                   {"action": action})
        assert inv.domain == ""


def test_help_version_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("fence_virt", ["-h"]) == 0
    assert "-S <cid>" in capsys.readouterr().out
    assert run("fence_xvm", ["-V"]) == 0
    assert capsys.readouterr().out.startswith("fence_xvm 1.9.0\n")
    assert run("fence_xvm", [], "action=metadata\n") == 0
    out = capsys.readouterr().out
    assert out.startswith('<?xml version="1.0" ?>\n<resource-agent name="fence_xvm"')
    assert '<action name="manpage" />' in out


def test_missing_default_key_is_an_error_not_a_downgrade(
        monkeypatch: pytest.MonkeyPatch, tmp_path: object,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(virtclient, "DEFAULT_KEY_FILE", "/nonexistent/fence_xvm.key")
    inv = virtclient.Invocation("fence_xvm", "status", "vm",
                                {"key_file": "/nonexistent/fence_xvm.key"})
    from guestfence.virt.wire import HashType

    with pytest.raises(virtclient.Failure, match="cannot read key file"):
        virtclient._load_key(inv, HashType.SHA256, HashType.SHA256)
    assert virtclient._load_key(inv, HashType.NONE, HashType.NONE) == b""


@pytest.mark.parametrize("action", ["off", "reboot", "status", "on"])
def test_host_list_answer_to_anything_but_list_is_a_failure(
        action: str, capsys: pytest.CaptureFixture[str]) -> None:
    from guestfence.virt.handshake import ClientOutcome

    outcome = ClientOutcome()
    outcome.result = 253
    inv = virtclient.Invocation("fence_virt", action, "vm", {})
    assert virtclient._report(inv, outcome) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "Unexpected host list" in captured.err


def test_stale_bytes_on_a_serial_line_are_not_our_answer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A late answer to an earlier request is already waiting on the line: skip it."""
    import os
    import threading

    from guestfence.agents import transport
    from guestfence.virt.wire import SERIAL_REQUEST_SIZE, SerialRequest, pack_serial_response

    to_us, to_daemon = os.pipe(), os.pipe()  # a tty is one fd both ways; two pipes here
    os.write(to_us[1], pack_serial_response(0))  # stale: someone else's "success"
    real_write = transport._write_all
    monkeypatch.setattr(transport, "_write_all",
                        lambda _fd, data, deadline: real_write(to_daemon[1], data, deadline))

    def daemon() -> None:
        os.read(to_daemon[0], SERIAL_REQUEST_SIZE)
        os.write(to_us[1], pack_serial_response(1))  # the answer to this request: failed

    t = threading.Thread(target=daemon)
    t.start()
    try:
        outcome = transport.serial_exchange(to_us[0], SerialRequest(1, "vm", 7), 5.0)
    finally:
        t.join()
        for f in (*to_us, *to_daemon):
            os.close(f)
    assert outcome.result == 1
