"""Run the real hub as a subprocess on a free port, for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class HubProcess:
    base: str  # FHIR base URL
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no flushing."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@contextlib.contextmanager
def running_hub(db_url: str, workdir: Path, extra_env: dict[str, str] | None = None, port: int | None = None) -> Iterator[HubProcess]:
    port = port or free_port()
    no_connectors = workdir / "no-connectors"  # connectors/ would make every test hub bind MLLP port 2575
    no_connectors.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "FHIRHUB_DATABASE_URL": db_url,
        "FHIRHUB_LOG_LEVEL": "INFO",
        "FHIRHUB_CONNECTORS_DIR": str(no_connectors),
        "FHIRHUB_SYNC_CONNECTORS_DIR": str(no_connectors),
        **(extra_env or {}),
    }
    log_path = workdir / f"hub-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hub", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    hub = HubProcess(f"http://127.0.0.1:{port}/fhir", proc, log_path)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"hub exited with {proc.returncode}:\n{hub.log()[-4000:]}")
            try:
                if httpx.get(f"{hub.base}/metadata", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"hub did not start:\n{hub.log()[-4000:]}")
            time.sleep(0.2)
        yield hub
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
