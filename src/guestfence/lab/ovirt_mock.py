"""A small oVirt / RHV engine REST API for tests of fence_rhevm.

Built from the documented API: the entry point ``<api_path>/`` (version 4, and
version 3 when the client sends ``Version: 3``; an engine that only speaks v3
answers a ``Version: 4`` request with an HTML error page, which is what the
original client probes for), ``GET vms`` with the ``search`` query language
(``name=VALUE``, ``name="VALUE"``, ``*`` wildcards, case-insensitive),
``GET vms/{id}``, and ``POST vms/{id}/start|stop|shutdown`` which change the
status asynchronously (down -> wait_for_launch -> powering_up -> up and
up -> powering_down -> down, a few reads per step). XML or JSON by ``Accept``.

Authentication is HTTP Basic; with ``Prefer: persistent-auth`` a session is
opened and its ``JSESSIONID`` cookie accepted afterwards. ``Filter: true`` gives
the user-level view (only VMs the user has permissions on); without it a
non-admin user gets 403. Errors can be injected (any status, or a hang), and
every request is recorded in :attr:`OvirtMock.requests`.

Runs in a thread (``with OvirtMock(...) as engine:``), plain HTTP or TLS with a
self-signed certificate for 127.0.0.1/localhost.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import fnmatch
import importlib
import json
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape, quoteattr

API_PATH = "/ovirt-engine/api"
ERROR_PAGE = ("<html><head><title>Error</title></head><body>The requested API version is "
              "not supported</body></html>")


@dataclass
class MockUser:
    password: str
    admin: bool = False
    vms: set[str] = field(default_factory=set)  # names of VMs the user has a role on
    read_only: set[str] = field(default_factory=set)  # of those, may see but not start/stop


@dataclass
class MockVm:
    name: str
    status: str = "down"
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    pending: list[str] = field(default_factory=list)  # statuses still to come, one per read


@dataclass
class Recorded:
    method: str
    path: str  # without the query
    query: str  # raw, as sent
    headers: dict[str, str]  # names lower-cased
    body: str
    user: str | None  # authenticated user
    auth: str  # "basic", "cookie" or "none"
    status: int = 0

    @property
    def params(self) -> dict[str, list[str]]:
        return parse_qs(self.query)


class OvirtMock:
    """The engine. Configure users and VMs, then start it (or use it as a context)."""

    def __init__(self, *, versions: Iterable[int] = (3, 4), tls: bool = False,
                 api_path: str = API_PATH, steps: int = 2,
                 users: dict[str, MockUser] | None = None) -> None:
        self.versions = frozenset(versions)
        self.tls = tls
        self.api_path = api_path.rstrip("/")
        self.steps = max(1, steps)
        self.users: dict[str, MockUser] = users if users is not None else {
            "admin@internal": MockUser("secret", admin=True)}
        self.vms: dict[str, MockVm] = {}
        self.requests: list[Recorded] = []
        self.sessions: dict[str, str] = {}  # JSESSIONID -> user
        self.sessions_created = 0
        # error injection: requests whose path contains `fail_match` get `fail_status`
        # (`fail_count` times, None: always); `hang_match` requests never get an answer
        self.fail_status: int | None = None
        self.fail_match = ""
        self.fail_count: int | None = None
        self.hang_match: str | None = None
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.cert_dir: Path | None = None
        self.cert_path: Path | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- set-up ----------------------------------------------------------------------

    def add_vm(self, name: str, status: str = "down") -> MockVm:
        vm = MockVm(name, status)
        self.vms[vm.id] = vm
        return vm

    def vm(self, name: str) -> MockVm:
        return next(vm for vm in self.vms.values() if vm.name == name)

    def fail(self, status: int | None, match: str = "", count: int | None = None) -> None:
        with self.lock:
            self.fail_status, self.fail_match, self.fail_count = status, match, count

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{self.api_path}"

    def start(self) -> OvirtMock:
        server = _Server(("127.0.0.1", 0), _Handler, self)
        if self.tls:
            self.cert_dir = Path(tempfile.mkdtemp(prefix="ovirt-mock-"))
            cert, key = self.cert_dir / "cert.pem", self.cert_dir / "key.pem"
            make_self_signed(cert, key)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            server.ssl_context = ctx
            self.cert_path = cert
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="ovirt-mock",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection (clients see the engine vanish)."""
        self.stopping.set()
        server = self._server
        if server is not None:
            server.shutdown()
            server.server_close()
            server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.cert_dir is not None:
            shutil.rmtree(self.cert_dir, ignore_errors=True)
            self.cert_dir = None

    def __enter__(self) -> OvirtMock:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- views for tests -------------------------------------------------------------

    def recorded(self, method: str | None = None, contains: str = "") -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if (method is None or r.method == method)
                    and contains in r.path]

    # --- engine logic ----------------------------------------------------------------

    def visible(self, user: MockUser, filtered: bool) -> list[MockVm]:
        if user.admin:
            return list(self.vms.values())
        return [vm for vm in self.vms.values() if filtered and vm.name in user.vms]

    def read(self, vm: MockVm) -> str:
        """The VM's status as this read sees it; then one step of a transition passes."""
        status = vm.status
        if vm.pending:
            vm.status = vm.pending.pop(0)
        return status

    def act(self, vm: MockVm, verb: str) -> tuple[int, str]:
        """start/stop/shutdown; (HTTP status, fault detail or "")."""
        running = vm.status != "down"
        if verb == "start":
            if running and vm.status not in ("powering_down",):
                return 409, "[Cannot run VM. VM is running.]"
            vm.status = "wait_for_launch"
            vm.pending = (["wait_for_launch"] * (self.steps - 1) + ["powering_up"] * self.steps
                          + ["up"])
        else:
            if not running:
                return 409, f"[Cannot {verb} VM. VM is not running.]"
            vm.status = "powering_down"
            vm.pending = ["powering_down"] * (self.steps - 1) + ["down"]
        return 200, ""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    ssl_context: ssl.SSLContext | None = None

    def __init__(self, address: tuple[str, int], handler: type[_Handler],
                 engine: OvirtMock) -> None:
        self.engine = engine
        self.connections: set[socket.socket] = set()
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.ssl_context is not None:
            # the handshake happens on the first read, in the connection's own thread
            sock = self.ssl_context.wrap_socket(sock, server_side=True,
                                                do_handshake_on_connect=False)
        with self.engine.lock:
            self.connections.add(sock)
        return sock, addr

    def shutdown_request(self, request: Any) -> None:
        with self.engine.lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self.engine.lock:
            connections = list(self.connections)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # TLS handshakes refused by a verifying client, cut connections: expected


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.handle_api("GET")

    def do_POST(self) -> None:
        self.handle_api("POST")

    def do_DELETE(self) -> None:
        self.handle_api("DELETE")

    # --- plumbing --------------------------------------------------------------------

    def handle_api(self, method: str) -> None:
        engine = self.server.engine
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode(errors="replace") if length else ""
        parts = urlsplit(self.path)
        rec = Recorded(method, parts.path, parts.query,
                       {k.lower(): v for k, v in self.headers.items()}, body, None, "none")
        with engine.lock:
            engine.requests.append(rec)
            hang = engine.hang_match is not None and engine.hang_match in parts.path
        if hang:
            engine.stopping.wait(60)
            self.close_connection = True
            return
        with engine.lock:
            status, ctype, text, extra = self.respond(engine, rec, method, parts.path)
        rec.status = status
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def respond(self, engine: OvirtMock, rec: Recorded, method: str,
                path: str) -> tuple[int, str, str, list[tuple[str, str]]]:
        extra: list[tuple[str, str]] = []
        json_out = "json" in rec.headers.get("accept", "")
        version = rec.headers.get("version", "4").strip() or "4"
        # authentication: a valid session cookie, else Basic
        user_name = None
        cookie = SimpleCookie(rec.headers.get("cookie", ""))
        if "JSESSIONID" in cookie and cookie["JSESSIONID"].value in engine.sessions:
            user_name, rec.auth = engine.sessions[cookie["JSESSIONID"].value], "cookie"
        else:
            auth = rec.headers.get("authorization", "")
            if auth.lower().startswith("basic "):
                rec.auth = "basic"
                try:
                    login, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    login, password = "", ""
                user = engine.users.get(login)
                if user is not None and secrets.compare_digest(user.password.encode(),
                                                                 password.encode()):
                    user_name = login
                    if "persistent-auth" in rec.headers.get("prefer", ""):
                        token = secrets.token_urlsafe(16)
                        engine.sessions[token] = login
                        engine.sessions_created += 1
                        secure = "; Secure" if engine.tls else ""
                        extra.append(("Set-Cookie", f"JSESSIONID={token}; Path="
                                      f"{engine.api_path}{secure}; HttpOnly"))
        if user_name is None:
            extra.append(("WWW-Authenticate", 'Basic realm="RESTAPI"'))
            return 401, "text/html", "<html><head><title>Error</title></head><body>" \
                "Unauthorized</body></html>", extra
        rec.user = user_name
        user = engine.users[user_name]

        def fault(status: int, reason: str, detail: str) -> tuple[int, str, str,
                                                                  list[tuple[str, str]]]:
            if json_out:
                return status, "application/json", json.dumps(
                    {"reason": reason, "detail": detail}), extra
            return status, "application/xml", (f"<fault><reason>{escape(reason)}</reason>"
                                                f"<detail>{escape(detail)}</detail></fault>"), extra

        if engine.fail_status is not None and engine.fail_match in path and \
                engine.fail_count != 0:
            if engine.fail_count is not None:
                engine.fail_count -= 1
            return fault(engine.fail_status, "Operation Failed", "[Injected failure]")
        if version not in {str(v) for v in engine.versions}:
            return 400, "text/html", ERROR_PAGE, extra
        v3 = version == "3"
        if not path.startswith(engine.api_path):
            return fault(404, "Not Found", "")
        rest = path[len(engine.api_path):].strip("/")
        filtered = rec.headers.get("filter", "").strip().lower() == "true"
        if not user.admin and not filtered and rest:
            return fault(403, "Operation Failed",
                         "[User is not authorized to perform this action.]")
        ctype = "application/json" if json_out else "application/xml"
        if rest == "" and method == "GET":
            return 200, ctype, _entry_point(engine.api_path, v3, json_out), extra
        visible = {vm.id: vm for vm in engine.visible(user, filtered)}
        segments = [unquote(s) for s in rest.split("/")]
        if segments[0] != "vms":
            return fault(404, "Not Found", "")
        if len(segments) == 1 and method == "GET":
            params = parse_qs(urlsplit(self.path).query)
            vms = list(visible.values())
            if "search" in params:
                match = _search(params["search"][0])
                if match is None:
                    return fault(400, "Operation Failed", "[Search query is invalid]")
                vms = [vm for vm in vms if match(vm.name)]
            if "max" in params:
                vms = vms[:int(params["max"][0])]
            rows = [(vm, engine.read(vm)) for vm in vms]
            return 200, ctype, _vms(engine.api_path, rows, v3, json_out), extra
        vm = visible.get(segments[1])
        if vm is None:
            return fault(404, "Not Found", "")
        if len(segments) == 2 and method == "GET":
            return 200, ctype, _vm(engine.api_path, vm, engine.read(vm), v3, json_out), extra
        if len(segments) == 3 and method == "POST" and \
                segments[2] in ("start", "stop", "shutdown"):
            if not user.admin and vm.name in user.read_only:
                return fault(403, "Operation Failed",
                             "[User is not authorized to perform this action.]")
            status, detail = engine.act(vm, segments[2])
            if status != 200:
                return fault(status, "Operation Failed", detail)
            if json_out:
                state: Any = {"state": "complete"} if v3 else "complete"
                return 200, ctype, json.dumps({"status": state}), extra
            state_xml = "<status><state>complete</state></status>" if v3 else \
                "<status>complete</status>"
            return 200, ctype, f"<action>{state_xml}</action>", extra
        return fault(405 if len(segments) <= 3 else 404, "Not Found", "")


def _search(query: str) -> Any:
    """A matcher for the one search term we support: name=VALUE / name="VALUE"."""
    found = re.fullmatch(r'\s*name\s*=\s*(?:"((?:[^"\\]|\\.)*)"|(\S+))\s*', query, re.I)
    if found is None:
        return None
    value = found.group(1) if found.group(1) is not None else found.group(2)
    value = re.sub(r"\\(.)", r"\1", value)
    pattern = re.compile(fnmatch.translate(value.replace("[", "[[]").replace("?", "[?]")),
                         re.I)
    return lambda name: pattern.match(name) is not None


def _entry_point(api: str, v3: bool, json_out: bool) -> str:
    if json_out:
        version: dict[str, Any] = {"major": 3 if v3 else 4, "minor": 6 if v3 else 5}
        return json.dumps({"link": [{"href": f"{api}/vms", "rel": "vms"}],
                           "product_info": {"name": "oVirt Engine", "version": version}})
    if v3:
        version_xml = '<version major="3" minor="6" build="0" revision="0"/>'
    else:
        version_xml = ("<version><build>0</build><full_version>4.5.6</full_version>"
                       "<major>4</major><minor>5</minor><revision>0</revision></version>")
    return (f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<api>'
            f'<link href="{api}/vms" rel="vms"/>'
            f'<link href="{api}/vms?search={{query}}" rel="vms/search"/>'
            f"<product_info><name>oVirt Engine</name><vendor>ovirt.org</vendor>{version_xml}"
            "</product_info></api>")


def _vm_xml(api: str, vm: MockVm, status: str, v3: bool) -> str:
    st = f"<status><state>{status}</state></status>" if v3 else f"<status>{status}</status>"
    return (f"<vm href={quoteattr(f'{api}/vms/{vm.id}')} id={quoteattr(vm.id)}>"
            f"<name>{escape(vm.name)}</name>{st}<type>server</type></vm>")


def _vm_json(api: str, vm: MockVm, status: str, v3: bool) -> dict[str, Any]:
    return {"href": f"{api}/vms/{vm.id}", "id": vm.id, "name": vm.name,
            "status": {"state": status} if v3 else status}


def _vm(api: str, vm: MockVm, status: str, v3: bool, json_out: bool) -> str:
    if json_out:
        return json.dumps(_vm_json(api, vm, status, v3))
    return '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n' + \
        _vm_xml(api, vm, status, v3)


def _vms(api: str, rows: list[tuple[MockVm, str]], v3: bool, json_out: bool) -> str:
    if json_out:
        return json.dumps({"vm": [_vm_json(api, vm, s, v3) for vm, s in rows]} if rows else {})
    return ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<vms>'
            + "".join(_vm_xml(api, vm, s, v3) for vm, s in rows) + "</vms>")


def make_self_signed(cert: Path, key: Path) -> None:
    """A certificate for localhost and 127.0.0.1: with `cryptography` if installed,
    else with the openssl command."""
    try:
        _with_cryptography(cert, key)
    except ImportError:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out", str(cert),
             "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True)


def _with_cryptography(cert_path: Path, key_path: Path) -> None:
    # imported by name: cryptography is optional and not a dependency of guestfence
    x509: Any = importlib.import_module("cryptography.x509")
    oid: Any = importlib.import_module("cryptography.x509.oid")
    hashes: Any = importlib.import_module("cryptography.hazmat.primitives.hashes")
    ser: Any = importlib.import_module("cryptography.hazmat.primitives.serialization")
    ec: Any = importlib.import_module("cryptography.hazmat.primitives.asymmetric.ec")
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(oid.NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"),
                 x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_path.write_bytes(key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8,
                                           ser.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(ser.Encoding.PEM))
