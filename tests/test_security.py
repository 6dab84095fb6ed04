"""Issue 21: paths a run folder or a dataset names, the input cache and its archives, the RPC
tracker and the profile as network/data peers, and a local Ray's token authentication. Each test
fails on the code before its fix (see the issue's report)."""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from conftest import run_in_process
from edgesearch.common.errors import InputError

# ------------------------------------------------------------------------------ paths


def _run_folder(run_dir: Path, profile: str) -> None:
    """A run folder `search report` accepts: run.json and a study.db with the base and one design."""
    from edgesearch.search import study as studies

    run_dir.mkdir(parents=True)
    run = {"run_name": run_dir.name, "profile": profile, "model": "/nonexistent/base.pt", "data": "/nonexistent/d.yaml",
           "seed": 0, "population": 4, "imgsz": 64, "sram_budget_bytes": 1 << 20, "strategy": "guided"}
    (run_dir / "run.json").write_text(json.dumps(run))
    study = studies.open_study(run_dir, seed=0, population_size=4, create=True)
    scores = {"map50_95": 0.5, "map50": 0.6, "latency_ms": 5.0, "latency_source": "measured: x", "sram_bytes": 1000,
              "weight_bytes": 900, "activation_bytes": 100, "params": 10, "flops": 100.0}
    study.set_user_attr("base", scores)
    trial = study.ask()
    trial.set_user_attr(studies.CANDIDATE_ATTR, {"layers": {"model.0.conv": {"weight_bits": 8}}})
    studies.tell_scores(study, trial, dict(scores, latency_ms=4.0), {"memory_bytes": 1 << 20})


def test_the_comparison_page_stays_beside_the_runs_whatever_their_profiles(tmp_path, capsys):
    runs = tmp_path / "deep" / "runs"
    _run_folder(runs / "a", "a/../../../outside")
    _run_folder(runs / "b", "/etc")
    result = run_in_process(capsys, "report", str(runs / "a"), str(runs / "b"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"] and sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["runs"]
    compare = [p for p in runs.iterdir() if p.name.startswith("compare-")]
    assert [p.name for p in compare] == ["compare-a_.._.._.._outside-etc"], sorted(p.name for p in runs.iterdir())
    assert (compare[0] / "index.html").is_file()


def test_list_file_lines_that_leave_the_dataset_folder_are_refused(tmp_path):
    from edgesearch.search.shipping import pack_dataset
    from test_shipping import _dataset

    secret = tmp_path / "secret.txt"
    secret.write_text("private key")
    root = tmp_path / "user"
    data_yaml = _dataset(root, "train: train.txt\nval: images/val\nnames: {0: digit}\n")
    for line in ("./../secret.txt", f".//{secret}", "./images/../../secret.txt", "./"):
        (root / "train.txt").write_text(f"./images/train/a.png\n{line}\n")
        with pytest.raises(InputError, match="inside its folder"):
            pack_dataset(data_yaml)
    (root / "train.txt").write_text("./images/train/a.png\n./images/./train/b.png\n")
    assert pack_dataset(data_yaml).data  # relative lines inside the folder still travel


def test_the_run_lock_never_follows_a_link_planted_in_the_run_folder(tmp_path):
    from edgesearch.search.run_folder import RunLock

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").symlink_to(victim)
    with pytest.raises(InputError, match="symbolic link"):
        with RunLock(run_dir):
            pass
    assert victim.read_text() == "precious"
    (run_dir / ".lock").unlink()
    (run_dir / ".lock").write_text("kept")  # an existing lock file is opened, not truncated
    with RunLock(run_dir):
        with pytest.raises(InputError, match="another search"):
            with RunLock(run_dir):
                pass
    assert (run_dir / ".lock").read_text() == "kept"


# ------------------------------------------------------------------------------ the input cache


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = b"x", link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info, data if kind == tarfile.REGTYPE else None


@pytest.mark.parametrize("bad", [
    _member("images/link", tarfile.SYMTYPE, link="a.png"),  # a link inside the folder: Python's data filter allows it
    _member("images/hard", tarfile.LNKTYPE, link="images/a.png"),
    _member("images/dev", tarfile.CHRTYPE),
    _member("images/fifo", tarfile.FIFOTYPE),
    _member("../climbed.txt"),
    _member("/tmp/absolute.txt"),
    _member("images/../../climbed.txt"),
    _member("images//a.png"),
], ids=["symlink", "hardlink", "device", "fifo", "dotdot", "absolute", "climbing", "not-normalised"])
def test_an_archive_member_that_is_no_plain_file_or_folder_inside_is_refused(tmp_path, monkeypatch, bad):
    import hashlib

    from edgesearch.runners.inputs import unpacked

    monkeypatch.setenv("EDGESEARCH_CACHE", str(tmp_path / "node"))
    data = _tar([_member("images", tarfile.DIRTYPE), _member("images/a.png"), bad])
    sha = hashlib.sha256(data).hexdigest()
    with pytest.raises(RuntimeError, match="holds"):
        unpacked(sha, lambda: data)
    inputs = tmp_path / "node" / "inputs"
    assert list(inputs.iterdir()) == [] and not (tmp_path / "climbed.txt").exists()


def test_a_cached_input_folder_is_trusted_by_its_content_not_its_name(tmp_path, monkeypatch):
    from edgesearch.runners.inputs import unpacked
    from edgesearch.search.shipping import pack_dataset
    from test_shipping import _dataset

    monkeypatch.setenv("EDGESEARCH_CACHE", str(tmp_path / "node"))
    archive = pack_dataset(_dataset(tmp_path / "user", "train: images/train\nval: images/val\nnames: {0: digit}\n"))
    fetched = []

    def fetch():
        fetched.append(1)
        return archive.data

    folder = unpacked(archive.sha256, fetch)
    original = (folder / archive.entry).read_text()
    assert unpacked(archive.sha256, fetch) == folder and len(fetched) == 1  # intact: reused
    (folder / "labels" / "train" / "a.cache").write_bytes(b"ultralytics' own label cache")  # written on the node
    assert unpacked(archive.sha256, fetch) == folder and len(fetched) == 1

    (folder / archive.entry).write_text("train: /elsewhere\nval: /elsewhere\n")  # edited in the cache
    assert (unpacked(archive.sha256, fetch) / archive.entry).read_text() == original and len(fetched) == 2
    (folder / "images" / "train" / "a.png").unlink()
    (folder / "images" / "train" / "a.png").symlink_to("/etc/hostname")  # a link planted in place of a file
    unpacked(archive.sha256, fetch)
    assert not (folder / "images" / "train" / "a.png").is_symlink() and len(fetched) == 3
    planted = tmp_path / "node" / "inputs" / ("0" * 64)  # a folder under a parcel's name, never unpacked here
    (planted / "images").mkdir(parents=True)
    zeros = b"\0"
    with pytest.raises(RuntimeError, match="corrupted"):  # not trusted: fetched and checked, and these bytes differ
        unpacked("0" * 64, lambda: zeros)




# ------------------------------------------------------------------------------ network and data peers


class FakeTracker:
    """A TCP peer that speaks the TVM RPC tracker's framing (tvm.rpc.base) and answers every
    request with `reply`; records who connects to `listener`, a port a reply may name."""

    def __init__(self, reply):
        from tvm.rpc import base

        self.base, self.reply = base, reply
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener_port = self.listener.getsockname()[1]
        self.connected = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()
        threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self):
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        self.connected.set()
        conn.close()  # no RPC server here: a client that got this far fails at once

    def _serve(self):
        import struct

        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                self.base.recvall(conn, 4)
                conn.sendall(struct.pack("<i", self.base.RPC_TRACKER_MAGIC))
                self.base.recvjson(conn)
                reply = self.reply(self) if callable(self.reply) else self.reply
                data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
                conn.sendall(struct.pack("<i", len(data)) + data)

    def close(self):
        self.server.close()
        self.listener.close()


@pytest.fixture
def tracker_with():
    trackers = []

    def start(reply):
        trackers.append(FakeTracker(reply))
        return trackers[-1]

    yield start
    for tracker in trackers:
        tracker.close()


def _rpc_profile(port: int):
    from edgesearch.runners.hardware.profiles import load_profile

    return load_profile("raspberry-pi-4").__class__(**{**vars(load_profile("raspberry-pi-4")), "rpc": {
        "tracker_host": "127.0.0.1", "tracker_port": port, "key": "probe"}})


@pytest.mark.parametrize("reply", [[0, "no"], {"a": 1}, [0, {"server_info": "x"}], [0, {"server_info": [7]}], b"\xff"])
def test_an_odd_tracker_summary_is_a_reason_not_a_crash(tracker_with, reply):
    from edgesearch.runners.hardware.rpc_runner import device_unavailable_reason

    tracker = tracker_with(reply)
    reason = device_unavailable_reason(_rpc_profile(tracker.port))
    assert isinstance(reason, str) and "127.0.0.1" in reason


@pytest.mark.parametrize("reply", [[0], "text", [0, ["host", "port", "key"]], [0, ["h", 70000, "k"]], [0, None], b"\xff"])
def test_an_odd_tracker_reply_to_a_session_request_is_one_clear_line(tracker_with, reply):
    from edgesearch.runners.hardware.rpc_runner import request_session

    tracker = tracker_with(reply)
    with pytest.raises(InputError, match="tracker 127.0.0.1"):
        request_session("127.0.0.1", tracker.port, "probe", wait_s=5, session_timeout_s=5)


def test_uploads_go_only_to_the_trackers_host_or_loopback_unless_allowed(tracker_with, monkeypatch):
    """0.0.0.0 reaches this machine on Linux but is neither loopback nor the tracker's host: it
    stands for any other machine a tracker could name."""
    from edgesearch.runners.hardware.rpc_runner import request_session

    tracker = tracker_with(lambda t: [0, ["0.0.0.0", t.listener_port, "match"]])
    try:
        with pytest.raises(InputError, match="EDGESEARCH_RPC_SERVERS=0.0.0.0"):
            request_session("127.0.0.1", tracker.port, "probe", wait_s=5, session_timeout_s=5)
    finally:
        assert not tracker.connected.wait(0.5), "the client connected to the address the tracker named"
    from edgesearch.runners.hardware.rpc_runner import check_server

    check_server("127.0.0.1", "tracker.example", set())  # loopback
    check_server("10.0.0.7", "10.0.0.7", set())  # the tracker's own host
    check_server("10.0.0.7", "127.0.0.1", {"10.0.0.7"})  # allowed by the user
    check_server("10.0.0.8", "127.0.0.1", {"*"})
    with pytest.raises(InputError):
        check_server("10.0.0.8", "127.0.0.1", {"10.0.0.7"})


def test_a_profiles_mtriple_never_chooses_the_program_that_links(tmp_path):
    import tvm

    from edgesearch.runners.hardware.cross_build import TargetNotBuildable, linker_for

    planted = tmp_path / "evil-g++"
    planted.write_text("#!/bin/sh\ntouch pwned\n")
    planted.chmod(0o755)
    for triple in (str(tmp_path / "evil"), "../../evil", "aarch64-linux-gnu; true"):
        with pytest.raises(TargetNotBuildable, match="not one edgesearch links"):
            linker_for(tvm.target.Target({"kind": "llvm", "mtriple": triple}))


# ------------------------------------------------------------------------------ a local Ray

LOCAL_RAY = """
import json, os, sys
from edgesearch.search import execution
execution.start_ray(None)
import ray
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address}), flush=True)
sys.stdin.readline()
execution.stop_ray()
print(os.environ.get("RAY_AUTH_MODE"), flush=True)
"""

CLIENT = """
import sys
from ray._raylet import GcsClient
try:
    GcsClient(address=sys.argv[1]).internal_kv_keys(b"", None, timeout=10)
    print("accepted")
except Exception as error:
    print("refused:", type(error).__name__, str(error).splitlines()[0][:200])
"""


def test_a_local_ray_refuses_a_client_without_its_token_even_when_the_environment_turns_tokens_off(tmp_path):
    """RAY_AUTH_MODE=disabled in the user's environment: the local Ray still requires the token
    (Ray 2.60 binds the node's routable address on Linux, so the token is what keeps it closed)."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", HOME=str(tmp_path), EDGESEARCH_CACHE=str(tmp_path / "cache"))
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen([sys.executable, "-c", LOCAL_RAY], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        gcs = json.loads(driver.stdout.readline())["gcs"]

        def client(**extra):
            return subprocess.run([sys.executable, "-c", CLIENT, gcs], env=dict(env, **extra), capture_output=True,
                                  text=True, timeout=60).stdout.strip()

        assert client().startswith("refused: AuthenticationError"), client()
        token = (tmp_path / ".ray" / "auth_token").read_text().strip()
        assert client(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token) == "accepted"  # the refusal is the token's
        assert stat.S_IMODE((tmp_path / ".ray" / "auth_token").stat().st_mode) & 0o077 == 0  # the user's alone
        out, _ = driver.communicate("\n", timeout=60)
        assert out.strip().splitlines()[-1] == "disabled"  # the environment as it was, after the run
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
