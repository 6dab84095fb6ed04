"""How a run obtains latency: one measurer, chosen once per run, behind one small interface.

    plan = decide_measurement(profile, estimate_only=...)   # once, at the run's start (plain data)
    measurer = measurer_for(profile, plan)                  # in each worker, from the plan
    measurer.latency(design)                                # latency fields of one built design

Three kinds (as MetaSchedule's Runner is "local" or "rpc", and its cost model estimates):
  local     built and timed on this machine (x86-host): TVM's time evaluator, fixed schedule or
            MetaSchedule-tuned
  rpc       cross-built for the device and timed on it over TVM RPC (rpc_runner.py)
  estimate  no device: the profile's calibrated latency model (latency_model.py), with its error
            band; the label says why no device was used

A run holds one kind of figure: a measured run never falls back to estimates (a trial whose device
went away fails), an estimating run never asks the device. Outside this module no code asks which
kind it has: scores.py hands every measurer the same `BuiltDesign`, and what else needs to know
whether a profile is timed on this machine asks `timed_here`.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import tvm
from torch import nn

from edgesearch.common.errors import InputError
from edgesearch.runners.hardware.build import build_local, measure_latency_local, tvm_threads
from edgesearch.runners.hardware.profiles import HardwareProfile
from edgesearch.runners.hardware.turns import timing_turn, work_step

KINDS = ("local", "rpc", "estimate")
SHARED_NOTE = ("; {others} other trial(s) ran on this machine while it was timed, their fine-tune steps, validations and "
               "builds paused (trials take turns to be timed)")
LOCAL_SOURCE = ("measured: TVM llvm build, fixed CPU schedule (no tuning), {precision}, {threads} threads, "
                "time evaluator median")
TUNED_SOURCE = ("measured: TVM llvm build tuned by MetaSchedule (budget {trials} trials), {precision}, {threads} threads, "
                "time evaluator median")
# How a latency was obtained, without the per-design parts of its label (precision, how many other
# trials ran meanwhile): two figures with the same method can be divided into a speed-up.
LOCAL_METHOD = "measured on this machine: fixed schedule, {threads} threads"
TUNED_METHOD = "measured on this machine: MetaSchedule-tuned, {threads} threads"
RPC_METHOD = "measured on {device} over TVM RPC"


@dataclasses.dataclass(frozen=True)
class MeasurementPlan:
    """A run's one decision about latency, as plain data (it travels to Ray workers and run.json)."""
    kind: str  # one of KINDS
    why: str = ""  # estimate: why no device was used

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"measurement kind {self.kind!r} is not one of {KINDS}")

    @classmethod
    def from_settings(cls, raw: dict | None) -> MeasurementPlan | None:
        return cls(**raw) if raw else None


@dataclasses.dataclass
class BuiltDesign:
    """What every measurer gets: the baked model, its build form and Relax module, its precisions."""
    model: nn.Module  # the baked design (fake-quant weights baked)
    module: object  # tvm IRModule of the build form (integer_model.integer_copy)
    imgsz: int
    precision_label: str  # what the build computes in (scores.precision)
    conv_precisions: dict[str, str]  # what each conv computes in on the device (precision.py)
    library_path: str | None = None  # also write the deployable library here


class Measurer:
    """Latency of a built design. Subclasses fill `latency`; failures raise (the trial fails)."""
    kind = ""
    reusable = True  # its figure depends only on the built graph: kept per run (build_cache.py)

    def __init__(self, profile: HardwareProfile, plan: MeasurementPlan, tune_trials: int = 0, tuning_db: str = ""):
        self.profile, self.plan = profile, plan
        self.tune_trials, self.tuning_db = tune_trials, tuning_db  # local: > 0 tunes each build with MetaSchedule

    def latency(self, design: BuiltDesign) -> dict:
        raise NotImplementedError

    def describe(self) -> str:
        """One line for the console and the report: how this run's latencies are obtained."""
        raise NotImplementedError


def naive_note(build: dict) -> str:
    """What the label must say when a build left kernels naive or blocks serial. The fixed schedule
    lists them; a tuned build (tuning.tune_and_build) counts its naive kernels and has no serial list."""
    def count(key: str) -> int:
        value = build.get(key) or 0
        return value if isinstance(value, int) else len(value)

    naive, serial = count("unscheduled_kernels"), count("serial_blocks")
    if not naive and not serial:
        return ""
    return (f"; NOT FULLY SCHEDULED: {naive} kernel(s) left as naive loops, {serial} block(s) left serial "
            "(slower than a scheduled build)")


def _linked(executable, library_path: str | None):
    """The built executable linked into a runnable module: written to `library_path` (atomically) and
    loaded from there, else linked in memory (Executable.jit). Linking runs the system linker, about 4 s
    for YOLOv8n: once per build (timing from the executable links it again), and in a work step, not
    while the other trials wait for the timing."""
    if not library_path:
        return executable.jit()
    from edgesearch.runners.hardware.cross_build import export_atomically

    return tvm.runtime.load_module(str(export_atomically(executable, Path(library_path))))


class LocalMeasurer(Measurer):
    kind = "local"

    def latency(self, design: BuiltDesign) -> dict:
        if self.tune_trials > 0:
            from edgesearch.runners.hardware.tuning import tune_and_build

            with work_step():
                executable, build = tune_and_build(design.module, self.profile.target, Path(self.tuning_db),
                                                   self.tune_trials)
            source = TUNED_SOURCE.format(trials=self.tune_trials, precision=design.precision_label,
                                         threads=tvm_threads())
            method = TUNED_METHOD.format(threads=tvm_threads())
            fields = dict(build)
        else:
            with work_step():  # a trial of this machine being timed pauses builds too
                executable, build = build_local(design.module, self.profile.target)
            source = LOCAL_SOURCE.format(precision=design.precision_label, threads=tvm_threads())
            method = LOCAL_METHOD.format(threads=tvm_threads())
            fields = {"build_s": build["build_s"], "unscheduled_kernels": len(build["unscheduled_kernels"]),
                      "serial_blocks": len(build["serial_blocks"]), "activation_bytes": build["activation_bytes"]}
        with work_step():
            runnable = _linked(executable, design.library_path)
        with timing_turn() as turn:
            timed = measure_latency_local(runnable, design.imgsz)
        result = {**timed, **fields, "latency_method": method,
                  "latency_source": source + SHARED_NOTE.format(others=turn["others"]) + naive_note(build),
                  "timing_wait_s": turn["paused_s"]}  # waiting for the other trials' steps to end (turns.py)
        if design.library_path:
            result["library_bytes"] = Path(design.library_path).stat().st_size
        return result

    def describe(self) -> str:
        how = f"MetaSchedule-tuned ({self.tune_trials} trials)" if self.tune_trials > 0 else "fixed schedule"
        return f"measured on this machine (TVM build, {how})"


class RpcMeasurer(Measurer):
    kind = "rpc"

    def latency(self, design: BuiltDesign) -> dict:
        from edgesearch.runners.hardware.cross_build import build_library
        from edgesearch.runners.hardware.rpc_runner import device_unavailable_reason, measure_latency_rpc

        unavailable = device_unavailable_reason(self.profile)
        if unavailable:  # the device went away mid-run: fail the trial rather than estimate it
            raise RuntimeError(f"{self.profile.name} could not be measured, as this run measures every trial: "
                               f"{unavailable}")
        with tempfile.TemporaryDirectory() as folder:
            library = Path(design.library_path or Path(folder) / "model.so")
            built = build_library(design.module, self.profile, library, check_kernels=False)
            timed = measure_latency_rpc(library, self.profile, (1, 3, design.imgsz, design.imgsz))
        return {**timed, "build_s": built["build_s"], "library_bytes": built["size_bytes"],
                "latency_method": RPC_METHOD.format(device=self.profile.name)}

    def describe(self) -> str:
        return f"measured on {self.profile.name} over TVM RPC"


class EstimateMeasurer(Measurer):
    kind = "estimate"
    reusable = False  # no build to save, and the estimate reads the model, not the graph

    def latency(self, design: BuiltDesign) -> dict:
        from edgesearch.runners.hardware.latency_model import calibration_for, estimate, network_work

        calibration = calibration_for(self.profile)
        result = estimate(network_work(design.model, design.imgsz, design.conv_precisions), self.profile,
                          calibration)
        fields = {"latency_ms": result["latency_ms"], "latency_error_pct": result["latency_error_pct"],
                  "latency_source": f"{result['latency_source']} (no device used: {self.plan.why or 'none'})",
                  "latency_method": f"estimated: {calibration.describe()}"}
        if design.library_path:  # the deployable library, built although nothing times it
            from edgesearch.runners.hardware.cross_build import build_library

            built = build_library(design.module, self.profile, Path(design.library_path), check_kernels=False)
            fields.update(build_s=built["build_s"], library_bytes=built["size_bytes"])
        return fields

    def describe(self) -> str:
        from edgesearch.runners.hardware.latency_model import calibration_for

        return f"estimated: {calibration_for(self.profile).describe()} (no device: {self.plan.why})"


MEASURERS = {cls.kind: cls for cls in (LocalMeasurer, RpcMeasurer, EstimateMeasurer)}


def measurer_for(profile: HardwareProfile, plan: MeasurementPlan | None = None, *, tune_trials: int = 0,
                 tuning_db: str = "") -> Measurer:
    """The run's measurer (the one place that chooses by kind); no plan: decided now. `tune_trials`
    and `tuning_db` (this node's tuning database) apply to builds timed on this machine."""
    plan = plan or decide_measurement(profile)
    return MEASURERS[plan.kind](profile, plan, tune_trials, tuning_db)


def timed_here(profile: HardwareProfile) -> bool:
    """Whether `profile`'s designs are built and timed on this machine (its runs get the local
    measurer): what the front's re-measure, the shadow comparison, the cost basis and the per-layer
    table ask. The one place that reads a profile's `measurement`."""
    return profile.measurement == "local"


def decide_measurement(profile: HardwareProfile, *, estimate_only: bool = False) -> MeasurementPlan:
    """The run's decision: this machine's profile is measured here; a device profile is measured over
    RPC when its tracker has the device and this machine can build for it, else estimated. A device
    that is there but cannot be built for is refused (InputError) with what to do instead."""
    if timed_here(profile):
        return MeasurementPlan("local")
    if estimate_only:
        return MeasurementPlan("estimate", why="--estimate-latency asked for estimates")
    from edgesearch.runners.hardware.rpc_runner import device_unavailable_reason

    unavailable = device_unavailable_reason(profile)
    if unavailable:
        return MeasurementPlan("estimate", why=unavailable)
    from edgesearch.runners.hardware.cross_build import why_not_buildable

    unbuildable = why_not_buildable(profile)
    if unbuildable:
        raise InputError(f"{profile.name} is registered with its RPC tracker, but {unbuildable}; run with "
                         "--estimate-latency for calibrated estimates, or take a design to the device's runtime "
                         "with `search export --format onnx` and time it there")
    return MeasurementPlan("rpc")
