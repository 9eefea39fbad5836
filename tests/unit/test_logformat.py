"""Log formats: the text request line stays as it was; JSON lines carry the request's fields."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from guestfence.host.logformat import JsonFormatter, log_fields
from guestfence.host.main import setup_logging
from guestfence.host.server import FenceService, Request
from guestfence.virt.wire import Op
from tests.unit.day2_fakes import KEY, Sink, make_service

TEXT_LINE = re.compile(
    r"request listener=tcp requester=10\.0\.0\.1 target=vm1 action=status seqno=7 "
    r"outcome=success duration_ms=\d+\.\d\Z")


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.Handler]]:
    """A handler on the daemon's logger; the test chooses its formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("guestfenced")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield stream, handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def serve(svc: FenceService, req: Request) -> None:
    asyncio.run(svc.serve(req, Sink(), None, authenticate=False))


def test_the_text_request_line_is_unchanged(captured: tuple[io.StringIO, logging.Handler]) -> None:
    stream, handler = captured
    handler.setFormatter(logging.Formatter("%(message)s"))
    serve(make_service(), Request("tcp", "10.0.0.1", Op.STATUS, "vm1", 7))
    assert TEXT_LINE.match(stream.getvalue().rstrip("\n")), stream.getvalue()


def test_a_json_request_line_has_the_request_fields(
        captured: tuple[io.StringIO, logging.Handler]) -> None:
    stream, handler = captured
    handler.setFormatter(JsonFormatter())
    req = Request("tcp", "10.0.0.1", Op.OFF, "vm1", 9)
    req.cluster = "web"
    serve(make_service(), req)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["timestamp"])
    assert (line["level"], line["logger"]) == ("info", "guestfenced")
    assert line["message"].startswith("request listener=tcp requester=10.0.0.1 target=vm1 "
                                      "action=off seqno=9 outcome=success")
    assert {k: line[k] for k in ("listener", "requester", "target", "action", "seqno",
                                 "cluster", "outcome")} == {
        "listener": "tcp", "requester": "10.0.0.1", "target": "vm1", "action": "off",
        "seqno": 9, "cluster": "web", "outcome": "success"}
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0


def test_a_json_drop_line_names_reason_and_requester(
        captured: tuple[io.StringIO, logging.Handler]) -> None:
    stream, handler = captured
    handler.setFormatter(JsonFormatter())
    make_service().drop("malformed", "10.0.0.5", "12 bytes, expected 176")
    line = json.loads(stream.getvalue())
    assert (line["event"], line["reason"], line["requester"]) == ("drop", "malformed",
                                                                  "10.0.0.5")
    assert line["level"] == "warning"


def test_keys_are_never_logged(captured: tuple[io.StringIO, logging.Handler]) -> None:
    stream, handler = captured
    handler.setFormatter(JsonFormatter())
    svc = make_service(key=KEY)
    svc.drop("auth", "10.0.0.5", "no key verifies the signature")
    serve(svc, Request("tcp", "10.0.0.1", Op.STATUS, "vm1", 1))
    text = stream.getvalue()
    assert len(text.splitlines()) == 2
    assert KEY[:32].hex() not in text
    assert repr(KEY[:32])[2:-1] not in text
    assert "key" not in {k.lower() for line in text.splitlines() for k in json.loads(line)}


def test_untrusted_names_stay_on_one_json_line() -> None:
    record = logging.LogRecord("guestfenced", logging.INFO, __file__, 1, "request %s",
                               ("vm\n1\x1b[2J",), None)
    record.__dict__.update(log_fields(target="vm\n1\x1b[2J"))
    out = JsonFormatter().format(record)
    assert "\n" not in out and "\x1b" not in out
    assert json.loads(out)["target"] == "vm\n1\x1b[2J"


def test_a_field_cannot_hide_the_message_and_exceptions_are_kept() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("guestfenced", logging.ERROR, __file__, 1, "failed", (),
                                   __import__("sys").exc_info())
    record.__dict__.update(log_fields(message="forged", level="debug"))
    line = json.loads(JsonFormatter().format(record))
    assert (line["message"], line["level"]) == ("failed", "error")
    assert (line["field_message"], line["field_level"]) == ("forged", "debug")
    assert "RuntimeError: boom" in line["exception"]


def test_syslog_json_lines_carry_the_tag() -> None:
    record = logging.LogRecord("guestfenced", logging.INFO, __file__, 1, "hello", (), None)
    out = JsonFormatter("guestfenced[%(process)d]: ").format(record)
    tag, _, body = out.partition(": ")
    assert tag == f"guestfenced[{record.process}]"
    assert json.loads(body)["message"] == "hello"


def test_setup_logging_chooses_the_format() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(0, True, "json")
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        setup_logging(0, True, "text")
        assert not isinstance(root.handlers[0].formatter, JsonFormatter)
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
