"""Hardware profiles: one YAML per device in hardware_profiles/ (see x86-host.yaml for the format)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgesearch.common.errors import InputError
from edgesearch.common.named_yaml import names_in, read_named_yaml

# the folder that holds search/, spaces/, runners/ and reports/: the repository in a checkout (and an editable
# install), site-packages/edgesearch/ in an installed wheel, where hardware_profiles/ ships as package data
# (pyproject.toml: edgesearch.hardware_profiles)
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
PROFILES_DIR = PACKAGE_ROOT / "hardware_profiles"
REQUIRED = ("name", "description", "measurement", "threads", "tvm", "sram_bytes", "dram_bytes",
            "peak_ops_per_s", "memory_bandwidth_bytes_per_s", "compute_precisions")
PRECISIONS = ("fp32", "fp16", "int8")  # what a conv can compute in (spaces.candidate.LayerKnobs.compute_precision)
# what `search export --format` writes (runners/export.py): onnx (TensorRT, ONNX Runtime), pt (an ultralytics
# checkpoint for its own exporter), ncnn (an ultralytics-style NCNN folder)
EXPORT_FORMATS = ("onnx", "pt", "ncnn")


@dataclasses.dataclass(frozen=True)
class HardwareProfile:
    name: str
    description: str
    measurement: str  # "local": timed on this machine; "rpc": timed on a device over TVM RPC
    threads: int
    target: dict
    host: dict | None
    sram_bytes: int
    dram_bytes: int
    peak_ops_per_s: dict[str, float]
    memory_bandwidth_bytes_per_s: float
    rpc: dict | None = None
    source: str = ""  # the YAML it was read from
    # which memory a design must fit, as a hard constraint of the search: "sram" (on-chip, where the
    # model must live on chip), "dram" (the board's memory; on-chip fit is shown, not required) or "none"
    memory_limit: str = "sram"
    # the precisions the device's deployment runtime computes in (not only stores): a precision
    # outside it is never offered as a speed-up; weights stored narrower are dequantized to one of these
    compute_precisions: tuple[str, ...] = ("fp32",)
    latency_model: dict | None = None  # calibration of the latency estimate (runners/hardware/latency_model.py)
    # the channel block the device's kernels compute in (a width between multiples is padded up to the
    # next one): a pruned layer keeps a multiple of it (spaces/space.py), so no cut is lost to padding
    channel_multiple: int = 1
    # the `search export --format` that writes what the device's runtime takes (the runtime its estimates mean):
    # the report's take-away offers it
    export_format: str = "onnx"

    @property
    def memory_budget_bytes(self) -> int | None:
        return {"sram": self.sram_bytes, "dram": self.dram_bytes, "none": None}[self.memory_limit]

    def computes(self, precision: str) -> bool:
        return precision in self.compute_precisions


def _check_rpc(block, where: str) -> None:
    """The `rpc:` block's shape, at load (before any slow work): a mapping whose tracker_port is a
    port number and whose servers (device addresses a tracker may send uploads to) are a list."""
    if block is None:
        return
    if not isinstance(block, dict):
        raise InputError(f"{where}: rpc must be a mapping with tracker_host, tracker_port and key")
    port = block.get("tracker_port")
    try:
        valid = port is None or (not isinstance(port, bool) and 0 < int(port) < 65536)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise InputError(f"{where}: rpc.tracker_port must be a port number (1-65535), not {port!r}")
    servers = block.get("servers")
    if servers is not None and (not isinstance(servers, list) or not all(isinstance(a, str) for a in servers)):
        raise InputError(f"{where}: rpc.servers must be a list of device addresses")


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    path, raw = read_named_yaml(name_or_path, PROFILES_DIR, "profile")
    where = f"profile {path.name}"
    missing = [key for key in REQUIRED if key not in raw]
    if missing:
        raise InputError(f"{where}: missing {', '.join(missing)}")
    if raw["measurement"] not in ("local", "rpc"):
        raise InputError(f"{where}: measurement must be 'local' or 'rpc', not {raw['measurement']!r}")
    tvm_cfg = raw["tvm"]
    if not isinstance(tvm_cfg, dict) or not isinstance(tvm_cfg.get("target"), dict) or "kind" not in tvm_cfg["target"]:
        raise InputError(f"{where}: tvm.target must be a JSON-style dict with a 'kind' (e.g. {{kind: llvm}})")
    if raw.get("memory_limit", "sram") not in ("sram", "dram", "none"):
        raise InputError(f"{where}: memory_limit must be 'sram', 'dram' or 'none', not {raw['memory_limit']!r}")
    precisions = raw["compute_precisions"]
    if (not isinstance(precisions, list) or not all(isinstance(p, str) for p in precisions) or "fp32" not in precisions
            or not set(precisions) <= set(PRECISIONS) or len(set(precisions)) != len(precisions)):
        raise InputError(f"{where}: compute_precisions must list fp32 and any of fp16, int8, "
                         f"not {precisions!r}")
    peaks = raw["peak_ops_per_s"]
    if not isinstance(peaks, dict) or not set(precisions) <= set(peaks):
        # the estimate prices each conv at the peak of the precision it computes in
        raise InputError(f"{where}: peak_ops_per_s needs an entry for each compute precision ({', '.join(precisions)})")
    _check_rpc(raw.get("rpc"), where)
    multiple = raw.get("channel_multiple", 1)
    if isinstance(multiple, bool) or not isinstance(multiple, int) or not 1 <= multiple <= 256:
        raise InputError(f"{where}: channel_multiple must be a whole number of channels in 1..256, not {multiple!r}")
    export_format = raw.get("export_format", "onnx")
    if export_format not in EXPORT_FORMATS:
        raise InputError(f"{where}: export_format must be one of {', '.join(EXPORT_FORMATS)}, not {export_format!r}")
    try:
        return HardwareProfile(
            name=str(raw["name"]),
            description=str(raw["description"]),
            measurement=raw["measurement"],
            threads=int(raw["threads"]),
            target=with_host_cpu(dict(tvm_cfg["target"])),
            host=dict(tvm_cfg["host"]) if tvm_cfg.get("host") else None,
            sram_bytes=int(raw["sram_bytes"]),
            dram_bytes=int(raw["dram_bytes"]),
            peak_ops_per_s={k: float(v) for k, v in peaks.items()},
            memory_bandwidth_bytes_per_s=float(raw["memory_bandwidth_bytes_per_s"]),
            rpc=raw.get("rpc"),
            source=str(path.resolve()),
            memory_limit=raw.get("memory_limit", "sram"),
            compute_precisions=tuple(p for p in PRECISIONS if p in precisions),
            latency_model=raw.get("latency_model"),
            channel_multiple=multiple,
            export_format=export_format,
        )
    except (TypeError, ValueError) as error:
        raise InputError(f"{where}: {error}") from None


def with_host_cpu(target: dict) -> dict:
    """`mcpu: host` names this machine's CPU as LLVM detects it (e.g. znver3, znver4): code built
    for another CPU can use instructions this one lacks (AVX-512 on a Zen 3 host dies with SIGILL),
    and the integer kernels pick their instructions from the CPU's features."""
    if target.get("mcpu") != "host":
        return target
    from tvm.target import codegen

    return {**target, "mcpu": codegen.llvm_get_system_cpu()}


def available_profiles() -> list[str]:
    return names_in(PROFILES_DIR)
