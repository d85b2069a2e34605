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
        """SIGKILL: no shutdown hooks, no flushing. The hub's own processes (API workers, HL7 mapping
        processes) must end by themselves soon after: none may outlive it."""
        children = descendants(self.proc.pid)
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        deadline = time.monotonic() + 15
        while (left := [pid for pid in children if alive(pid)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not left, f"processes of the hub outlived its SIGKILL: {left}"


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            with contextlib.suppress(OSError):
                kids = [int(c) for c in Path(f"/proc/{parent}/task/{task}/children").read_text().split()]
                out += kids
                todo += kids
    return out


def alive(pid: int) -> bool:
    """Alive and not a zombie (an orphan waiting to be reaped has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


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
