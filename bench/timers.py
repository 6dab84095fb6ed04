"""Timers shared by the latency benchmarks: each returns a callable that yields `repeat` samples
(ms), each the mean of `number` runs, after one warm-up run, so TVM and ONNX Runtime are timed
alike and variants can be interleaved round by round."""

from __future__ import annotations

import statistics
import time

import numpy as np
import onnxruntime as ort
import tvm


def ort_session(model_bytes: bytes, threads: int) -> ort.InferenceSession:
    """A CPU session as the benchmarks compare it: `threads` intra-op threads, sequential, all
    graph optimisations."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def tvm_timer(vm, input_shapes, number: int, repeat: int):
    """Samples of a Relax VM's `main` on zero inputs of `input_shapes` (TVM's time evaluator)."""
    arguments = [tvm.runtime.tensor(np.zeros(tuple(shape), "float32"), tvm.cpu()) for shape in input_shapes]
    evaluator = vm.time_evaluator("main", tvm.cpu(), number=number, repeat=repeat)
    evaluator(*arguments)  # warm-up
    return lambda: [t * 1e3 for t in evaluator(*arguments).results]


def ort_timer(session: ort.InferenceSession, imgsz: int, number: int, repeat: int):
    """Samples of an ONNX Runtime session on one zero image."""
    feed = {"images": np.zeros((1, 3, imgsz, imgsz), np.float32)}
    session.run(None, feed)  # warm-up

    def samples():
        result = []
        for _ in range(repeat):
            started = time.perf_counter()
            for _ in range(number):
                session.run(None, feed)
            result.append((time.perf_counter() - started) / number * 1e3)
        return result

    return samples


def summarize(samples: list[float]) -> dict:
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "max_ms": max(samples),
            "spread_ms": max(samples) - min(samples), "n": len(samples)}
