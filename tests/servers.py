"""Real servers for the end-to-end tests, each started on a loopback address and stopped by its own process group.

PostgreSQL comes from Debian's `postgresql` package (`make system-deps` installs it); MLflow's and
Ray's servers from the test environment.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _killpg(process: Optional["subprocess.Popen[bytes]"]) -> None:
    if process is not None and process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=30)


def _wait(check: Callable[[], bool], what: str, process: "subprocess.Popen[bytes]", log: Path,
          timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    said = lambda: log.read_text()[-3000:] if log.exists() else ""  # noqa: E731
    while time.monotonic() < deadline:
        if check():
            return
        if process.poll() is not None:
            raise AssertionError(f"{what} exited: {said()}")
        time.sleep(0.5)
    raise AssertionError(f"{what} did not come up in {timeout:.0f} s: {said()}")


class Postgres:
    """A PostgreSQL server of its own (initdb in a fresh folder), on 127.0.0.1; as root it runs as `postgres`."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb") or ""]
        if not found[-1]:
            pytest.fail("PostgreSQL is not installed: run `make system-deps` (apt-get install postgresql)")
        self.bin = Path(found[-1]).parent
        self.folder = Path(tempfile.mkdtemp(prefix="fs-pg-"))  # not under pytest's 0700 root-only tmp
        self.folder.chmod(0o755)
        self.port = free_port()
        self.process: Optional["subprocess.Popen[bytes]"] = None
        self.as_user: List[str] = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def uri(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/mlflow"

    def start(self) -> None:
        data, sockets, log = self.folder / "data", self.folder / "sockets", self.folder / "postgres.log"
        for folder in (data, sockets):
            folder.mkdir()
        if self.as_user:
            shutil.chown(self.folder, "postgres")
            for path in (data, sockets):
                shutil.chown(path, "postgres")
        subprocess.run([*self.as_user, str(self.bin / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                        "--no-sync"], check=True, capture_output=True, timeout=120)
        self.process = subprocess.Popen(
            [*self.as_user, str(self.bin / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(sockets),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)

        def ready() -> bool:
            return subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                                  capture_output=True).returncode == 0

        _wait(ready, "postgres", self.process, log)
        subprocess.run([*self.as_user, str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", "postgres", "mlflow"], check=True, capture_output=True, timeout=60)

    def stop(self) -> None:
        _killpg(self.process)
        shutil.rmtree(self.folder, ignore_errors=True)


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with --serve-artifacts; it keeps its data across restarts."""

    def __init__(self, folder: Path, backend: str = "") -> None:
        self.folder = folder
        self.backend = backend or f"sqlite:///{folder / 'server.db'}"
        self.port = free_port()
        self.process: Optional["subprocess.Popen[bytes]"] = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.folder / "server.log"
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                   "--backend-store-uri", self.backend, "--workers", "1",
                   "--serve-artifacts", "--artifacts-destination", str(self.folder / "server-artifacts")]
        self.process = subprocess.Popen(command, cwd=self.folder, stdout=open(log, "a"), stderr=subprocess.STDOUT,
                                        start_new_session=True, env={**os.environ, "HOME": str(self.folder)})

        def healthy() -> bool:
            try:
                return urllib.request.urlopen(f"{self.uri}/health", timeout=2).read() == b"OK"
            except OSError:
                return False

        _wait(healthy, "mlflow server", self.process, log)

    def stop(self) -> None:
        """Down at once, as a crashed server or a dropped network is."""
        _killpg(self.process)
        self.process = None


class RayCluster:
    """A Ray cluster of real `ray start` processes on loopback addresses of this machine, token auth on.

    Ray turns 127.0.0.1 into the machine's network address, but not 127.0.0.2 and up (loopback all
    the same), so the head listens on 127.0.0.2 and each further node on 127.0.0.3, .4 ...: nodes
    look like separate hosts, and no packet leaves the machine. Each node is its own `ray start
    --block` process group, stopped by that group alone.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.home = folder / "home"
        self.port = free_port()
        self.nodes: List["subprocess.Popen[bytes]"] = []
        self.ray = str(Path(sys.executable).parent / "ray")
        self.dashboard_port = free_port()
        self.temp = Path(tempfile.mkdtemp(prefix="fsray-"))  # short: Ray's socket paths must fit in 107 bytes

    @property
    def address(self) -> str:
        return f"127.0.0.2:{self.port}"

    @property
    def dashboard(self) -> str:
        """The head's dashboard, where `ray job submit` sends jobs."""
        return f"http://127.0.0.2:{self.dashboard_port}"

    def env(self, **extra: str) -> Dict[str, str]:
        """The environment of a process that has the cluster's token (HOME holds ~/.ray/auth_token), with
        this Python's scripts (ray, finesweep) on PATH, as on a node where finesweep is installed."""
        base = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**base, "HOME": str(self.home), "PATH": path, **extra}

    def start(self, nodes: List[List[str]]) -> None:
        """Start the head, then one node per entry of ``nodes`` (its extra `ray start` arguments)."""
        self.home.mkdir(parents=True, exist_ok=True)
        subprocess.run([self.ray, "get-auth-token", "--generate"], env=self.env(), check=True, capture_output=True,
                       timeout=60)
        self._node(["--head", f"--port={self.port}", "--node-ip-address=127.0.0.2", "--num-cpus=2",
                    "--dashboard-host=127.0.0.2", f"--dashboard-port={self.dashboard_port}"], "head")
        for index, extra in enumerate(nodes, start=3):
            self._node([f"--address={self.address}", f"--node-ip-address=127.0.0.{index}",
                        f"--min-worker-port={20000 + 1000 * index}", f"--max-worker-port={20999 + 1000 * index}",
                        *extra], f"node{index}")
        self.wait_for(1 + len(nodes))

    def _node(self, args: List[str], name: str) -> None:
        log = self.folder / f"{name}.log"
        self.nodes.append(subprocess.Popen(
            [self.ray, "start", "--block", "--disable-usage-stats", *args], cwd=self.folder,
            env=self.env(RAY_AUTH_MODE="token", RAY_TMPDIR=str(self.temp / name)), stdout=open(log, "w"),
            stderr=subprocess.STDOUT, start_new_session=True))

    def alive(self) -> int:
        """Nodes the head counts as active (via `ray status`)."""
        status = subprocess.run([self.ray, "status", f"--address={self.address}"], env=self.env(RAY_AUTH_MODE="token"),
                                capture_output=True, text=True, timeout=60).stdout
        active = status.split("Active:", 1)[-1].split("Pending:", 1)[0] if "Active:" in status else ""
        return sum(1 for line in active.splitlines() if line.strip().startswith("1 node_"))

    def wait_for(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.alive() >= count:
                return
            assert all(node.poll() is None for node in self.nodes), "a ray start process exited"
            time.sleep(1)
        raise AssertionError(f"{count} Ray nodes did not come up: {(self.folder / 'head.log').read_text()[-2000:]}")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            _killpg(node)
        shutil.rmtree(self.temp, ignore_errors=True)
