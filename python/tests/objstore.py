"""Object storage on loopback for the tests and benchmarks.

- `S3Server`: s3s-fs, an S3 server on a folder (the `s3s-fs` crate, built by
  `make test-tools` into target/tools/bin), with SigV4 credentials;
- `FaultProxy`: a plain HTTP proxy in front of it that logs every request
  (method, path, Range, If-Match, status, bytes sent) and injects faults on
  the next matching requests: 503, 429, a reset connection, a body cut short;
- `HttpsServer`: nginx serving a folder over HTTPS (a self-signed
  certificate for 127.0.0.1), ranged, with ETags and If-Match.

Every server listens on 127.0.0.1 only, on a free port, and every wait is a
bounded loop.
"""

from __future__ import annotations

import datetime
import http.client
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
ACCESS_KEY = "sealtensors-test"
SECRET_KEY = "sealtensors-test-secret"
REGION = "us-east-1"


def s3s_fs_binary() -> Path:
    """The s3s-fs server binary (SEALTENSORS_S3S_FS, or what `make test-tools` built)."""
    env = os.environ.get("SEALTENSORS_S3S_FS")
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = Path(env) if env else target / "tools" / "bin" / "s3s-fs"
    if not path.exists():
        raise RuntimeError(
            f"{path} is missing: run `make test-tools` (cargo install s3s-fs into target/tools)"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None, what: str) -> None:
    """Wait (at most 10 s) until something accepts on the port."""
    for _ in range(200):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start listening on 127.0.0.1:{port}")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a server, then kill it if it is still there after 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class S3Server:
    """s3s-fs on a folder, on loopback, with SigV4 credentials."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = open(root.parent / "s3s-fs.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                str(s3s_fs_binary()),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--access-key",
                ACCESS_KEY,
                "--secret-key",
                SECRET_KEY,
                str(root),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port, self.proc, "s3s-fs")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        """A boto3 S3 client talking to the server directly (not through a proxy)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def client_env(endpoint: str) -> dict[str, str]:
    """The variables that point sealtensors (object_store) at `endpoint`."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    if_match: str | None
    status: int
    sent: int
    received: int = 0


class FaultProxy(ThreadingHTTPServer):
    """A logging, fault-injecting HTTP proxy to one upstream server.

    `faults` holds actions for the next requests of `fault_method` (GET
    unless set) whose path contains `fault_path` (all when it is empty): "503", "429", "reset" (the
    connection closed before any answer), "cut" (the headers and half the
    body, then the connection closed), "norange" (the answer turned into a
    200 without Content-Range, as from a server that ignores Range),
    "weak" (the answer's ETag made weak, W/"..."), "hide" (every `<Contents>`
    entry of a listing whose key contains `hidden` taken out: a store that
    serves two versions of a folder).
    """

    daemon_threads = True

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.requests: list[Request] = []
        self.faults: deque[str] = deque()
        self.fault_path = ""
        self.fault_method = "GET"
        self.hidden = ""
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.port = int(self.server_address[1])
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.faults.clear()
            self.fault_path = ""
            self.fault_method = "GET"
            self.hidden = ""

    def gets(self, path_part: str = "") -> list[Request]:
        with self.lock:
            return [r for r in self.requests if r.method == "GET" and path_part in r.path]

    def of(self, method: str, path_part: str = "") -> list[Request]:
        """The requests of one method whose path contains `path_part`."""
        with self.lock:
            return [r for r in self.requests if r.method == method and path_part in r.path]

    def take_fault(self, method: str, path: str) -> str | None:
        with self.lock:
            if method == self.fault_method and self.faults and self.fault_path in path:
                return self.faults.popleft()
        return None

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultProxy

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _record(self, status: int, sent: int) -> None:
        with self.server.lock:
            self.server.requests.append(
                Request(
                    self.command,
                    self.path,
                    self.headers.get("Range"),
                    self.headers.get("If-Match"),
                    status,
                    sent,
                    int(self.headers.get("Content-Length") or 0),
                )
            )

    def _forward(self) -> None:
        fault = self.server.take_fault(self.command, self.path)
        if fault and self.command != "GET":
            # A refused upload still sends its body: read it, so the client
            # sees the answer rather than a broken pipe.
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
        if fault == "reset":
            self._record(0, 0)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault in ("503", "429"):
            body = b"<Error><Code>SlowDown</Code></Error>"
            # Logged before the answer is written: a client may hang up as
            # soon as it has read the status line.
            self._record(int(fault), len(body))
            self.send_response(int(fault))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        up = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items()}
            up.request(self.command, self.path, body=body, headers=headers)
            resp = up.getresponse()
            data = resp.read()
            status = resp.status
            drop = {"transfer-encoding", "connection", "content-length"}
            if fault == "norange" and status == 206:
                # Answered as a server that ignores Range does: 200, no Content-Range.
                status = 200
                drop.add("content-range")
            if fault == "hide" and status == 200 and self.server.hidden:
                entry = (
                    rb"<Contents>(?:(?!</Contents>).)*?"
                    + re.escape(self.server.hidden.encode())
                    + rb".*?</Contents>"
                )
                data = re.sub(entry, b"", data, flags=re.S)
            cut = fault == "cut" and len(data) > 1
            self._record(status, len(data) // 2 if cut else len(data))
            self.send_response(status)
            for k, v in resp.getheaders():
                if k.lower() not in drop:
                    if fault == "weak" and k.lower() == "etag":
                        v = "W/" + v
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if cut:
                half = len(data) // 2
                self.wfile.write(data[:half])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if self.command != "HEAD":
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The client hung up (as it does on an answer it refuses).
            self.close_connection = True
        finally:
            up.close()

    do_GET = _forward
    do_HEAD = _forward
    do_PUT = _forward
    do_POST = _forward
    do_DELETE = _forward


def self_signed(folder: Path) -> tuple[Path, Path, Path]:
    """A test CA, and a server certificate for 127.0.0.1 it signed (webpki
    refuses a CA certificate as a server's): (ca.pem, cert.pem, key.pem)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def builder(subject: str, issuer: str, public: Any) -> Any:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        builder("sealtensors test CA", "sealtensors test CA", ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        builder("127.0.0.1", "sealtensors test CA", key.public_key())
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


class HttpsServer:
    """nginx serving `www` over HTTPS on loopback (Range, ETag, If-Match), and
    the same over plain HTTP on a second loopback port (`http_url`: what a
    client costs without TLS, for the benchmarks)."""

    def __init__(self, folder: Path) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(nginx).exists():
            raise RuntimeError("nginx is missing: run scripts/system-deps.sh")
        self.folder = folder
        self.www = folder / "www"
        self.www.mkdir(parents=True, exist_ok=True)
        self.ca, cert, key = self_signed(folder)
        self.port = free_port()
        self.http_port = free_port()
        self.access_log = folder / "access.log"
        conf = folder / "nginx.conf"
        temp = folder / "temp"
        temp.mkdir(exist_ok=True)
        conf.write_text(
            f"""
daemon off;
user root;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log;
events {{ worker_connections 256; }}
http {{
    log_format ranges '$request_method $uri "$http_range" "$http_if_match" $status $bytes_sent';
    access_log {self.access_log} ranges;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    server {{
        listen 127.0.0.1:{self.port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {self.www};
        location / {{ }}
    }}
    server {{
        listen 127.0.0.1:{self.http_port};
        root {self.www};
        location / {{ }}
    }}
}}
"""
        )
        self.proc = subprocess.Popen(
            [nginx, "-c", str(conf), "-p", str(folder)],
            stdout=subprocess.DEVNULL,
            stderr=open(folder / "nginx.stderr", "wb"),  # noqa: SIM115
        )
        wait_port(self.port, self.proc, "nginx")

    def url(self, name: str) -> str:
        return f"https://127.0.0.1:{self.port}/{name}"

    def http_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.http_port}/{name}"

    def log_lines(self) -> list[str]:
        if not self.access_log.exists():
            return []
        return self.access_log.read_text().splitlines()

    def stop(self) -> None:
        stop_process(self.proc)
