"""A real multi-node Ray cluster on this machine, for the cluster tests and bench/cluster_scaling.py.

One head node with no CPUs (it schedules; no trial runs there) and worker nodes, each its own
`ray start` with its own temp dir, ports and EDGESEARCH_CACHE, so that no node can read another's
caches or the driver's. Every process of a node carries NODE_MARKER=<node folder> in its
environment: that is how a node's processes are found to be killed, and only those (never
`ray stop`, which stops every Ray on the machine, other sessions' included).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgesearch.runners.hardware.turns import TURNS_DIR_ENV

NODE_MARKER = "EDGESEARCH_TEST_RAY_NODE"
RAY = str(Path(sys.executable).with_name("ray"))
TRIAL_TITLE = "ray::_score_remote"  # a Ray worker's process title while it runs a trial
REMEASURE_TITLE = "ray::_remeasure_remote"  # ... while it re-measures the front


_GIVEN_PORTS: set[int] = set()  # ports this process has handed out: Ray binds them later, not at once


def free_port() -> int:
    """A port nothing listens on and not handed out before in this process: the kernel may give a
    port just released to the next probe, and two Ray components given the same one refuse to start
    ("port number ... is used by other components", seen in CI)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port


class LocalCluster:
    def __init__(self, workers: int, *, cpus_per_worker: int = 1, dashboard: bool = False, env: dict | None = None,
                 gpus_per_worker: float = 0, cpu_only_workers: int = 0):
        """`workers` nodes of `cpus_per_worker` CPUs and `gpus_per_worker` GPUs each (logical ones on a
        machine without CUDA: `ray start --num-gpus`), then `cpu_only_workers` more without GPUs."""
        # short root: Ray's unix socket paths live under each node's temp dir (107-byte limit)
        self.root = Path(tempfile.mkdtemp(prefix="esray-", dir="/tmp"))
        # Ray 2.60 switches a head to token authentication when ~/.ray/auth_token exists (a local
        # ray.init() writes one) but not the nodes and drivers joining it by address: one mode for all
        self.env = dict(os.environ, **(env or {}), RAY_AUTH_MODE="disabled")
        self.env.pop("RAY_ADDRESS", None)
        self.env.pop(TURNS_DIR_ENV, None)  # each node takes turns in its own cache, as on a machine of its own
        self.port = free_port()
        self.dashboard_port = free_port() if dashboard else None
        self.nodes: list[str] = []  # worker node names, in start order
        try:
            self._start_nodes(workers, cpus_per_worker, dashboard, gpus_per_worker, cpu_only_workers)
        except BaseException:
            self.shutdown()
            raise

    def _start_nodes(self, workers: int, cpus_per_worker: int, dashboard: bool, gpus_per_worker: float = 0,
                     cpu_only_workers: int = 0) -> None:
        dashboard_args = (["--include-dashboard=true", "--dashboard-host=127.0.0.1",
                           f"--dashboard-port={self.dashboard_port}"] if dashboard else ["--include-dashboard=false"])
        # fast failure detection: a stopped node is declared dead in about 3 s, not 30
        health = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
                  "RAY_health_check_timeout_ms": "1000"}
        # no CPU, no GPU (none detected from this machine's own): the head only schedules
        self._wait(self._launch("head", ["--head", f"--port={self.port}", "--num-cpus=0", "--num-gpus=0",
                                         *dashboard_args], health))
        self.add_workers(workers, cpus_per_worker, gpus_per_worker, cpu_only=cpu_only_workers)

    def driver_env(self, **extra: str) -> dict:
        """The environment of a driver (a `search` command) that joins this cluster."""
        return dict(os.environ, RAY_AUTH_MODE="disabled", **extra)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def add_workers(self, count: int, cpus: int, gpus: float = 0, *, cpu_only: int = 0) -> list[str]:
        """Start `count` worker nodes of `cpus` CPUs and `gpus` GPUs each, and `cpu_only` more of `cpus`
        CPUs and no GPU (all at once); their names."""
        names = [f"w{len(self.nodes) + i + 1}" for i in range(count + cpu_only)]
        launched = [self._launch(name, [f"--address={self.address}", f"--num-cpus={cpus}",
                                        f"--num-gpus={gpus if i < count else 0}"]) for i, name in enumerate(names)]
        for started in launched:
            self._wait(started)
        self.nodes += names
        return names

    def node_cache(self, name: str) -> Path:
        return self.root / name / "cache"

    def node_id(self, name: str) -> str:
        """Ray's id of a node, read from its raylet's command line."""
        for pid in self.processes(name):
            for arg in _cmdline(pid).split():
                if "/raylet/raylet" in _cmdline(pid).split()[0] and arg.startswith("--node_id="):
                    return arg.split("=", 1)[1]
        raise LookupError(f"no raylet for node {name}")

    def _launch(self, name: str, args: list[str], extra_env: dict | None = None):
        folder = self.root / name
        (folder / "cache").mkdir(parents=True)
        env = dict(self.env, **(extra_env or {}), EDGESEARCH_CACHE=str(folder / "cache"), **{NODE_MARKER: str(folder)})
        ports = [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                 f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                 f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
                 "--min-worker-port=0", "--max-worker-port=0"]
        command = [RAY, "start", *args, *ports, f"--node-name={name}", f"--temp-dir={folder / 'tmp'}",
                   "--object-store-memory=100000000", "--include-log-monitor=false", "--disable-usage-stats",
                   "--log-style=record"]
        return name, subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    @staticmethod
    def _wait(launched) -> None:
        name, process = launched
        output, _ = process.communicate(timeout=120)
        if process.returncode != 0:
            raise RuntimeError(f"ray start of node {name} failed:\n{output[-3000:]}")

    # ------------------------------------------------------------------ processes of one node

    def processes(self, name: str | None = None) -> list[int]:
        """PIDs of a node's processes (of every node of this cluster when `name` is None)."""
        wanted = str(self.root / name) if name else str(self.root) + "/"
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for item in environ:
                if item.startswith(NODE_MARKER.encode() + b"="):
                    value = item.split(b"=", 1)[1].decode()
                    if value == wanted or (name is None and value.startswith(wanted)):
                        found.append(int(entry.name))
                    break
        return found

    def trial_workers(self, title: str = TRIAL_TITLE) -> dict[str, list[int]]:
        """{node: PIDs of its Ray workers running a trial now} (or a task of another `title`)."""
        running = {}
        for name in self.nodes:
            pids = [pid for pid in self.processes(name) if _cmdline(pid).startswith(title)]
            if pids:
                running[name] = pids
        return running

    def wait_for_trials(self, count: int, timeout: float, exclude: set[int] = frozenset()) -> dict[str, list[int]]:
        """Wait until `count` trials run at once (not counting PIDs in `exclude`); {node: PIDs}."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = {n: [p for p in pids if p not in exclude] for n, pids in self.trial_workers().items()}
            running = {n: pids for n, pids in running.items() if pids}
            if sum(len(p) for p in running.values()) >= count:
                return running
            time.sleep(0.2)
        raise TimeoutError(f"{count} trial(s) were not running at once within {timeout} s")

    def stop_node(self, name: str) -> None:
        """Stop one worker node as a machine would go down: every process of it killed at once."""
        for pid in self.processes(name):
            _kill(pid, signal.SIGKILL)
        self.nodes.remove(name)

    def shutdown(self) -> None:
        """Kill every process of this cluster (nothing of it is kept) and remove its folder."""
        for _ in range(3):  # a process forked while the others were being killed is caught next round
            for pid in self.processes():
                _kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        shutil.rmtree(self.root, ignore_errors=True)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
