"""MetaSchedule tuning of a Relax module, with a persistent database (one per profile).

Two problems make MetaSchedule unusable out of the box with apache-tvm 0.27.0.post1; both are
worked around here or in the pins:

1. A segfault in `tvm::ffi::ToJSONGraph` (the first thing tuning does) with apache-tvm-ffi
   0.1.15.x, whose native type hooks changed ABI; apache-tvm 0.27.0.post1 was built against
   0.1.14 and only asks for `>=0.1.14.post0`. Fix: requirements.lock pins 0.1.14.post1.
2. An apparent hang at "Sending N sample(s) to builder": every fresh builder worker imports
   `tvm.s_tir.tensor_intrin`, whose hundreds of `@T.prim_func` definitions each call
   `inspect.stack()`; that import takes ~25 s here, the builder kills workers after 30 s and
   starts fresh ones, so no build ever finishes. Fix: `install_fast_inspect_stack` gives the
   TVMScript parser an `inspect.stack` that reads only the lines it needs (25 s -> 2.5 s), and
   the builder's `initializer` applies it and pre-imports the kernels once per worker, outside
   the per-build timeout.

Workloads already in the database are not tuned again: a later candidate or run with the same
layer shapes only compiles.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import tvm
from tvm import relax

from edgesearch.runners.hardware import tensor_intrinsics
from edgesearch.runners.hardware.build import FAST_MATH_LEGALIZATION, relax_pipeline


def install_fast_inspect_stack() -> None:
    """Give TVMScript's parser modules a cheap `inspect.stack()` (idempotent; the global
    `inspect` module is untouched). Self-contained, so cloudpickle can ship it to a worker."""
    import importlib
    import inspect
    import linecache
    import sys as _sys
    import types

    def fast_stack(context: int = 1):
        frames = []
        frame: types.FrameType | None = _sys._getframe(1)
        while frame is not None:
            code = frame.f_code
            line = linecache.getline(code.co_filename, frame.f_lineno, frame.f_globals) if context > 0 else ""
            frames.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name,
                                            [line] if line else None, 0 if line else None))
            frame = frame.f_back
        return frames

    class InspectWithFastStack(types.ModuleType):
        def __getattr__(self, name):
            return getattr(inspect, name)

    proxy = InspectWithFastStack("inspect")
    setattr(proxy, "stack", fast_stack)
    for name in ("tvm.tirx.script.parser.entry", "tvm.script.parser.ir.entry", "tvm.relax.script.parser.entry",
                 "tvm.tirx.script.builder.ir"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if getattr(module, "inspect", None) is inspect:
            setattr(module, "inspect", proxy)


def _builder_worker_init() -> None:
    """Runs once in each fresh builder worker, untimed, before its first build."""
    install_fast_inspect_stack()
    import tvm.s_tir.tensor_intrin  # noqa: F401  (what every build imports; ~2.5 s once patched)


def _builder(max_workers: int):
    import cloudpickle
    from tvm.s_tir import meta_schedule as ms

    # the worker must not need this package importable: send the initializer by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ms.builder.LocalBuilder(max_workers=max_workers, timeout_sec=60.0, initializer=_builder_worker_init)


def _runner():
    from tvm.s_tir import meta_schedule as ms

    config = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50, enable_cpu_cache_flush=False)
    return ms.runner.LocalRunner(timeout_sec=60.0, evaluator_config=config)


def open_database(db_dir: Path):
    from tvm.s_tir import meta_schedule as ms

    db_dir.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(path_workload=str(db_dir / "database_workload.json"),
                                    path_tuning_record=str(db_dir / "database_tuning_record.json"),
                                    allow_missing=True, module_equality="structural")


def _fused(mod, target):
    """Legalize and fuse as compile_relax does before it applies the database, so the kernels
    tuned here have the same structural keys as the ones compiled later."""
    from tvm.relax import pipeline

    passes = [*pipeline.library_dispatch_passes(target), relax.transform.LegalizeOps(FAST_MATH_LEGALIZATION),
              relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(), relax.transform.FuseOps(),
              relax.transform.FuseTIR()]
    with target, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(passes)(mod)


def tune_and_build(mod, target: dict, db_dir: Path, max_trials: int, trials_per_iter: int = 16) -> tuple[object, dict]:
    """(executable, {tuned_tasks, total_tasks, tune_s, build_s, unscheduled_kernels}): tune the
    kernels the database lacks, with `max_trials` candidates in all, then compile with the best
    schedules found; kernels the budget did not reach get edgesearch's fixed schedule (TVM's own
    fallback would leave them as naive loops, ~40x slower)."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule import relax_integration

    install_fast_inspect_stack()  # TuneContext imports the tensor intrinsics in this process too
    tensor_intrinsics.vnni_intrinsic()  # MetaSchedule's x86 VNNI rules tensorize int8 kernels with it (fixed)
    target = tvm.target.Target(target)
    database = open_database(Path(db_dir))
    tasks = relax_integration.extract_tasks(_fused(mod, target), target, module_equality="structural")
    todo = [t for t in tasks if database.query_tuning_record(t.dispatched[0], target, t.task_name) is None]
    started = time.perf_counter()
    if todo:
        work_dir = str(Path(db_dir) / "logs")
        contexts, weights = relax_integration.extracted_tasks_to_tune_contexts(
            extracted_tasks=todo, work_dir=work_dir, num_threads="physical")
        ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=work_dir, max_trials_global=max_trials,
                      max_trials_per_task=max(trials_per_iter, max_trials // len(todo)),
                      num_trials_per_iter=trials_per_iter, builder=_builder(max(1, min(2, os.cpu_count() or 1))),
                      runner=_runner(), database=database)
    tune_s = time.perf_counter() - started
    capture: dict = {}
    executable = tvm.compile(mod, target=target,
                             relax_pipeline=relax_pipeline(target, schedule=True, capture=capture, database=database))
    return executable, {"tuned_tasks": len(todo), "total_tasks": len(tasks), "tune_s": tune_s,
                        "build_s": time.perf_counter() - started - tune_s,
                        "tuned_kernels": capture["tuned_kernels"], "unscheduled_kernels": len(capture["unscheduled"])}
