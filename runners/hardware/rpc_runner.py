"""Latency measured on a remote device over TVM RPC.

How TVM RPC works: a *tracker* (`python -m tvm.exec.rpc_tracker`) keeps a queue of devices; each
device runs an RPC *server* (`python -m tvm.exec.rpc_server --tracker host:port --key KEY`) that
registers itself under a key (e.g. "rasp4"). A client asks the tracker for a session with a key,
uploads a compiled library (`executable.export_library("model.so")`, built for the device), loads it
on the device and times it there with TVM's time evaluator, so network latency is not in the numbers.

Where the tracker is: the profile's `rpc:` block (tracker_host, tracker_port, key), overridden by
the environment variables EDGESEARCH_RPC_TRACKER=host:port and EDGESEARCH_RPC_KEY.

The tracker is a network peer, not trusted: its replies are checked for shape (one clear line if
odd), and the library is uploaded only to a server on the tracker's own host or on loopback,
unless the user names the device's address (`servers_allowed`: the profile's `rpc.servers` list,
or EDGESEARCH_RPC_SERVERS=addr,addr; `*` allows any address the tracker names).

`device_unavailable_reason(profile)` answers within a timeout whether a device is there, and if not
why (a search decides from it, once, whether every trial is measured or estimated: scores.latency_mode). The measuring functions check it too and bound the wait for a
free device: TVM's own client would wait forever, as the tracker queues requests for unknown keys.
The library must be built for the device (cross-compiled .so, or a .tar the device links itself).
"""

from __future__ import annotations

import os
import socket
import statistics
import struct
from collections.abc import Set
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tvm
from tvm import relax, rpc
from tvm.rpc import base as rpc_protocol

from edgesearch.common.errors import InputError
from edgesearch.runners.hardware.profiles import HardwareProfile

TRACKER_ENV = "EDGESEARCH_RPC_TRACKER"
KEY_ENV = "EDGESEARCH_RPC_KEY"
SERVERS_ENV = "EDGESEARCH_RPC_SERVERS"  # device addresses a tracker may send uploads to (besides its own host)
RPC_SOURCE = "measured: TVM RPC on {key} via {host}:{port}, {device} device"

# TVM target kind -> the RPCSession method that makes the matching remote device.
DEVICE_OF_TARGET_KIND = {"llvm": "cpu", "c": "cpu", "cuda": "cuda", "opencl": "cl", "vulkan": "vulkan",
                         "metal": "metal", "rocm": "rocm"}


class NoTracker(InputError):
    """No RPC tracker is configured: no device (a search then estimates). A tracker configured
    wrongly (a port that is no number, ...) is a plain InputError: refused."""


def tracker_address(profile: HardwareProfile) -> tuple[str, int, str]:
    """(tracker host, tracker port, device key): the profile's `rpc:` block, with the environment's
    EDGESEARCH_RPC_TRACKER=host:port and EDGESEARCH_RPC_KEY taking precedence."""
    where = f"profile {profile.name}"
    block = profile.rpc or {}
    if not isinstance(block, dict):
        raise InputError(f"{where}: rpc must be a mapping with tracker_host, tracker_port and key")
    host, port = block.get("tracker_host"), block.get("tracker_port")
    key = os.environ.get(KEY_ENV) or block.get("key")
    if os.environ.get(TRACKER_ENV):
        host, port = _split_host_port(os.environ[TRACKER_ENV])
    if not host or port is None or not key:
        raise NoTracker(f"{where}: no RPC tracker configured; give rpc.tracker_host, rpc.tracker_port and "
                         f"rpc.key in the profile, or set {TRACKER_ENV}=host:port and {KEY_ENV}")
    return str(host), _valid_port(port, where), str(key)


def _split_host_port(text: str) -> tuple[str, int]:
    host, colon, port = text.strip().rpartition(":")
    if not colon or not host:
        raise InputError(f"{TRACKER_ENV} must be host:port, not {text!r}")
    return host, _valid_port(port, TRACKER_ENV)


def _valid_port(port, where: str) -> int:
    try:
        number = int(port)
    except (TypeError, ValueError):
        raise InputError(f"{where}: tracker port must be a number, not {port!r}") from None
    if not 0 < number < 65536:
        raise InputError(f"{where}: tracker port {number} is outside 1-65535")
    return number


def tracker_summary(host: str, port: int, timeout_s: float) -> dict:
    """The tracker's summary ({"queue_info": ..., "server_info": [{"key": "server:KEY", ...}]}).

    Same request as `tvm.rpc.connect_tracker(host, port).summary()`, on a socket with a timeout:
    TVM's client retries a refused connection for 60 s and never times out a silent peer."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(struct.pack("<i", rpc_protocol.RPC_TRACKER_MAGIC))
        if struct.unpack("<i", rpc_protocol.recvall(sock, 4))[0] != rpc_protocol.RPC_TRACKER_MAGIC:
            raise ConnectionError(f"{host}:{port} is not a TVM RPC tracker")
        rpc_protocol.sendjson(sock, [rpc_protocol.TrackerCode.SUMMARY])
        reply = rpc_protocol.recvjson(sock)
    if not (isinstance(reply, list) and len(reply) == 2):
        raise ConnectionError(f"{host}:{port} sent an odd reply to a summary request: {_shown(reply)}")
    code, summary = reply
    if code != rpc_protocol.TrackerCode.SUCCESS:
        raise ConnectionError(f"tracker {host}:{port} refused the summary request")
    servers = summary.get("server_info") if isinstance(summary, dict) else None
    if not (isinstance(servers, list) and all(isinstance(s, dict) and isinstance(s.get("key"), str) for s in servers)):
        raise ConnectionError(f"{host}:{port} sent an odd summary: {_shown(summary)}")
    return summary


def _shown(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def servers_allowed(profile: HardwareProfile) -> set[str]:
    """Addresses besides the tracker's host and loopback that a tracker may name as the device:
    the profile's rpc.servers and EDGESEARCH_RPC_SERVERS (comma-separated; `*`: any)."""
    block = profile.rpc if isinstance(profile.rpc, dict) else {}
    listed = block.get("servers") or []
    if isinstance(listed, str) or not isinstance(listed, list):
        raise InputError(f"profile {profile.name}: rpc.servers must be a list of device addresses")
    env = [a.strip() for a in os.environ.get(SERVERS_ENV, "").split(",") if a.strip()]
    return {str(a) for a in listed} | set(env)


def _addresses(host: str) -> set[str]:
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError):
        return set()


def check_server(server_host: str, tracker_host: str, allowed: set[str]) -> None:
    """Refuse a device address the tracker names that is neither the tracker's host, nor
    loopback, nor one the user allowed (the library and inputs would go to that machine)."""
    import ipaddress

    if "*" in allowed or server_host in allowed or server_host == tracker_host or server_host == "localhost":
        return
    try:
        if ipaddress.ip_address(server_host).is_loopback:
            return
    except ValueError:
        pass
    if server_host in _addresses(tracker_host):
        return
    raise InputError(f"tracker {tracker_host} sends the upload to {server_host}, which is neither the tracker's host "
                     f"nor loopback; if that is your device, allow it: {SERVERS_ENV}={server_host} (or rpc.servers "
                     "in the profile; '*' allows any)")


def device_unavailable_reason(profile: HardwareProfile, timeout_s: float = 2.0) -> str | None:
    """None when the tracker answers and a server is registered under the key; else why not."""
    try:
        host, port, key = tracker_address(profile)
    except NoTracker as error:  # no tracker configured: no device, and the reason says so
        return str(error)
    try:
        summary = tracker_summary(host, port, timeout_s)
    except (OSError, ValueError) as error:  # refused, unreachable, timed out, garbled reply
        return f"no TVM RPC tracker answers at {host}:{port} ({error or type(error).__name__})"
    registered = [server["key"] for server in summary["server_info"]]
    if f"server:{key}" not in registered:
        known = ", ".join(sorted({name.removeprefix("server:") for name in registered})) or "none"
        return f"tracker {host}:{port} has no server with key {key!r} (keys registered: {known})"
    return None


def device_available(profile: HardwareProfile, timeout_s: float = 2.0) -> bool:
    """True when a device for the profile is registered with its tracker (answers within timeout_s)."""
    return device_unavailable_reason(profile, timeout_s) is None


def request_session(host: str, port: int, key: str, *, wait_s: float, session_timeout_s: float,
                    allowed: Set[str] = frozenset()) -> rpc.RPCSession:
    """An RPC session with a free device registered under `key`, waiting at most `wait_s` for one.

    Same exchange as `tvm.rpc.connect_tracker(host, port).request(key)`, whose wait has no limit:
    the tracker queues the request until a server with the key is free, then answers with that
    server's address and a one-time match key. `session_timeout_s`: the server ends a session that
    lasts longer, so a stuck run cannot hold the device forever. `allowed`: device addresses the
    user accepts besides the tracker's host and loopback (check_server)."""
    try:
        with socket.create_connection((host, port), timeout=wait_s) as sock:
            sock.sendall(struct.pack("<i", rpc_protocol.RPC_TRACKER_MAGIC))
            if struct.unpack("<i", rpc_protocol.recvall(sock, 4))[0] != rpc_protocol.RPC_TRACKER_MAGIC:
                raise InputError(f"{host}:{port} is not a TVM RPC tracker")
            rpc_protocol.sendjson(sock, [rpc_protocol.TrackerCode.REQUEST, key, "", 1])  # user "", priority 1
            reply = rpc_protocol.recvjson(sock)
    except TimeoutError:
        raise InputError(f"no device with key {key!r} at tracker {host}:{port} became free within {wait_s:g} s") from None
    except (OSError, ValueError, struct.error) as error:  # refused, reset, not JSON
        raise InputError(f"tracker {host}:{port} failed the request for {key!r} ({error or type(error).__name__})") from None
    if not (isinstance(reply, list) and len(reply) == 2):
        raise InputError(f"tracker {host}:{port} sent an odd reply to the request for {key!r}: {_shown(reply)}")
    if reply[0] != rpc_protocol.TrackerCode.SUCCESS:
        raise ConnectionError(f"tracker {host}:{port} refused the request for {key!r}: {_shown(reply)}")
    match = reply[1]
    if not (isinstance(match, list) and len(match) == 3 and isinstance(match[0], str) and match[0]
            and type(match[1]) is int and 0 < match[1] < 65536 and isinstance(match[2], str)):
        raise InputError(f"tracker {host}:{port} named no usable device (host, port, match key) for {key!r}: "
                         f"{_shown(match)}")
    server_host, server_port, match_key = match
    check_server(server_host, host, set(allowed))
    return rpc.connect(server_host, server_port, match_key, session_timeout=session_timeout_s)


@contextmanager
def remote_vm(library_path: str | Path, profile: HardwareProfile, *, wait_s: float = 120,
              session_timeout_s: float = 300):
    """(Relax VM on the remote device, remote device, source label) for an exported library, in one
    RPC session. A server serves one session at a time: the session closes (and the server takes the
    next client) once the block has exited and the caller holds no remote handle (VM, device, tensor)."""
    library_path = Path(library_path)
    if not library_path.is_file():
        raise InputError(f"compiled library {library_path} does not exist (export it with export_library)")
    reason = device_unavailable_reason(profile)
    if reason:
        raise InputError(f"profile {profile.name}: {reason}")
    host, port, key = tracker_address(profile)
    device_name = _device_name(profile)
    session = request_session(host, port, key, wait_s=wait_s, session_timeout_s=session_timeout_s,
                              allowed=servers_allowed(profile))
    session.upload(str(library_path))  # into the server's per-session temporary folder
    device = getattr(session, device_name)(0)
    if not device.exist:
        raise InputError(f"RPC device {key!r} has no {device_name} device for target {profile.target['kind']!r}")
    vm = relax.VirtualMachine(session.load_module(library_path.name), device)
    yield vm, device, RPC_SOURCE.format(key=key, host=host, port=port, device=device_name)


def _device_name(profile: HardwareProfile) -> str:
    kind = profile.target["kind"]
    if kind not in DEVICE_OF_TARGET_KIND:
        raise InputError(f"profile {profile.name}: no RPC device type for target kind {kind!r}; "
                         f"known: {', '.join(DEVICE_OF_TARGET_KIND)}")
    return DEVICE_OF_TARGET_KIND[kind]


def measure_latency_rpc(library_path: str | Path, profile: HardwareProfile, input_shape: tuple[int, ...], *,
                        repeat: int = 20, min_repeat_ms: int = 50) -> dict:
    """Median and spread of the library's "main" latency, timed on the profile's RPC device.

    The time evaluator runs on the device: one warm-up call, then `repeat` timings, each averaging
    as many calls as fill `min_repeat_ms`. The input is zeros of `input_shape` (float32), set once on
    the device with the VM's stateful API (the RPC-safe way to call a VM function repeatedly)."""
    with remote_vm(library_path, profile) as (vm, device, source):
        vm.set_input("main", tvm.runtime.tensor(np.zeros(input_shape, dtype="float32"), device))
        timer = vm.time_evaluator("invoke_stateful", device, number=1, repeat=repeat, min_repeat_ms=min_repeat_ms)
        times_ms = [seconds * 1e3 for seconds in timer("main").results]
    return {"latency_ms": statistics.median(times_ms), "latency_spread_ms": max(times_ms) - min(times_ms),
            "latency_source": f"{source}, time evaluator median of {repeat}"}


def run_rpc(library_path: str | Path, profile: HardwareProfile, data: np.ndarray) -> np.ndarray:
    """The library's "main" output for `data`, computed on the profile's RPC device (for checking
    that the device computes what this machine does). Single-tensor outputs only."""
    with remote_vm(library_path, profile) as (vm, device, _):
        # A direct call, not set_input/get_outputs: VirtualMachine.get_outputs builds a self-referencing
        # closure that keeps the VM, and so the session and the device, alive until garbage collection.
        output = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(data, dtype="float32"), device))
        return output.numpy()
