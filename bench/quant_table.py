"""The YOLOv7 quantization study's comparison, re-made on the base YOLO: weight memory and mAP per
bit-width x scheme x granularity, post-training and after the default short fine-tune.

Every conv of the design space's layers (the DFL conv is excluded there) gets the same knobs;
everything else stays float. For each config it measures
  - weight bytes from the exact packed format (what a device stores: codes, fp16 parameters,
    fp32 biases, headers), and the saving vs the base packed in fp32 and in fp16;
  - mAP50-95 / mAP50 post-training (apply -> bake -> validate, no fine-tune) and after the short
    fine-tune (apply -> fine-tune -> bake -> validate, as `search eval` scores a candidate);
  - the drop vs the base model's mAP, measured once by the same validator.
Two reference rows come with it: the base itself, and the base fine-tuned the same way in fp32
(what the fine-tune alone does to mAP, so the quantized rows after fine-tune can be read fairly).

Results go to a JSON file after every config, so an interrupted run resumes where it stopped
(configs already in the JSON are skipped) and a markdown table is written next to it.

    .venv/bin/python bench/quant_table.py [--quick] [--configs '4b-*'] [--finetune-iters 60]
                                          [--checkpoint best.pt --data data.yaml] [--out bench/quant_table]
"""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import json
import os
import sys
import time
from pathlib import Path

from edgesearch.search.cli_env import apply_process_env

apply_process_env()  # before torch / TVM load (the search modules import both)

import torch  # noqa: E402

from edgesearch.common.errors import InputError  # noqa: E402
from edgesearch.common.files import write_text_atomically  # noqa: E402
from edgesearch.runners.accuracy.finetune import finetune, validate  # noqa: E402
from edgesearch.search.presets import PRESETS  # noqa: E402
from edgesearch.search.resolve import Inputs, resolve_inputs  # noqa: E402
from edgesearch.spaces.apply import apply_candidate, uniform_candidate, weight_bytes  # noqa: E402
from edgesearch.spaces.candidate import Candidate, LayerKnobs  # noqa: E402
from edgesearch.spaces.packing import bake_fake_quant  # noqa: E402

BITS = (8, 4)
SCHEMES = ("affine", "symmetric", "pwlq", "kmeans")
GRANULARITIES = ("tensor", "filter", "channel", "group")
GROUP_SIZE = 16
QUICK_CONFIGS = ("8b-affine-filter", "4b-pwlq-channel")  # one easy, one hard: enough for a sanity run
QUICK_FINETUNE_ITERS = 6
FORMAT_VERSION = 2  # bump when what a row means changes, so old JSON is not mixed in


# ---------------------------------------------------------------------------------------- configs


def config_name(bits: int, scheme: str, granularity: str) -> str:
    return f"{bits}b-{scheme}-{granularity}"


def all_configs() -> dict[str, LayerKnobs]:
    """Every config of the study's grid, in table order (8 bits first)."""
    return {config_name(b, s, g): LayerKnobs(weight_bits=b, scheme=s, granularity=g, group_size=GROUP_SIZE)
            for b, s, g in itertools.product(BITS, SCHEMES, GRANULARITIES)}


def select_configs(patterns: list[str] | None) -> dict[str, LayerKnobs]:
    """The configs whose names match any of the fnmatch patterns (all of them without patterns)."""
    configs = all_configs()
    if not patterns:
        return configs
    chosen = {name: knobs for name, knobs in configs.items() if any(fnmatch.fnmatchcase(name, p) for p in patterns)}
    if not chosen:
        raise InputError(f"--configs {' '.join(patterns)} matches none of {', '.join(configs)}")
    return chosen


# ---------------------------------------------------------------------------------------- measuring


def _timed(work):
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started


def _accuracy(model, inputs: Inputs, settings: dict, finetune_iters: int) -> dict:
    """Fine-tune (if any steps), bake the fake-quant into real weights, validate. Returns the
    mAPs and timings; `model` is changed in place."""
    losses, finetune_s = _timed(lambda: finetune(model, inputs.data_yaml, iterations=finetune_iters,
                                                 imgsz=settings["imgsz"], batch=settings["batch"],
                                                 seed=settings["seed"]))
    bake_fake_quant(model)  # the model now holds exactly the weights the packing decodes to
    scores, validate_s = _timed(lambda: validate(model, inputs.data_yaml, imgsz=settings["imgsz"]))
    return {**scores, "finetune_s": finetune_s, "validate_s": validate_s,
            "finetune_final_loss": losses[-1] if losses else None}


def measure_reference(inputs: Inputs, settings: dict) -> dict:
    """The base model's packed bytes in fp32 and fp16 (same layers as the configs), its mAP, and
    its mAP after the same fine-tune in fp32."""
    layers = list(inputs.resolved)
    fp32 = apply_candidate(inputs.base_model, Candidate({}))  # fused, as every config is
    fp16 = apply_candidate(inputs.base_model, uniform_candidate(inputs.base_model, LayerKnobs(weight_bits=16), layers))
    base = _accuracy(fp32, inputs, settings, finetune_iters=0)
    tuned = _accuracy(apply_candidate(inputs.base_model, Candidate({})), inputs, settings, settings["finetune_iters"])
    return {"fp32_weight_bytes": weight_bytes(fp32), "fp16_weight_bytes": weight_bytes(fp16),
            "base": base, "fp32_finetuned": tuned}


def measure_config(inputs: Inputs, knobs: LayerKnobs, settings: dict) -> dict:
    """Packed bytes and mAPs of one config, post-training and after the fine-tune."""
    candidate = uniform_candidate(inputs.base_model, knobs, list(inputs.resolved))
    post_training_model = apply_candidate(inputs.base_model, candidate)
    post_training = _accuracy(post_training_model, inputs, settings, finetune_iters=0)
    finetuned = _accuracy(apply_candidate(inputs.base_model, candidate), inputs, settings, settings["finetune_iters"])
    # the packed size depends only on shapes and knobs, so both models give the same bytes
    return {"weight_bits": knobs.weight_bits, "scheme": knobs.scheme, "granularity": knobs.granularity,
            "group_size": knobs.group_size if knobs.granularity == "group" else None,
            "weight_bytes": weight_bytes(post_training_model),
            "post_training": post_training, "finetuned": finetuned}


# ---------------------------------------------------------------------------------------- results file


def load_results(path: Path, settings: dict) -> dict:
    """The results so far for these settings; a file made with other settings is refused (mixing
    rows fine-tuned differently would make a wrong table)."""
    if not path.exists():
        return {"settings": settings, "reference": None, "configs": {}}
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{path} is not valid JSON ({error}); remove it to start over") from None
    if results.get("settings") != settings:
        raise InputError(f"{path} holds results for other settings ({results.get('settings')}); "
                         "pass --out for a new table or remove it to start over")
    return results


# ---------------------------------------------------------------------------------------- table


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _drop(value: float, reference: float) -> str:
    return f"{100 * (reference - value):+.1f}"


def markdown_table(results: dict) -> str:
    """The study's columns: memory saving vs FP32 and FP16, mAP and its drop (points of mAP, vs
    the unmodified base), post-training (PTQ) and after the fine-tune (FT); plus the FT drop vs
    the base fine-tuned alike, since the fine-tune by itself moves mAP too."""
    settings, reference = results["settings"], results["reference"]
    fp32_bytes, fp16_bytes = reference["fp32_weight_bytes"], reference["fp16_weight_bytes"]
    base, base_tuned = reference["base"], reference["fp32_finetuned"]
    lines = [
        f"Base: `{Path(settings['checkpoint']).name}` on `{settings['data']}`, imgsz {settings['imgsz']}, "
        f"{settings['layers']} convs quantized (all but DFL), fine-tune {settings['finetune_iters']} steps "
        f"(batch {settings['batch']}). mAP in %, drop in points vs the base; group size {GROUP_SIZE}.",
        "",
        "| bits | scheme | granularity | weights KiB | saving vs FP32 | saving vs FP16 "
        "| PTQ mAP50-95 | PTQ drop | FT mAP50-95 | FT drop | FT drop vs FP32 FT | PTQ mAP50 | FT mAP50 |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def row(bits, scheme, granularity, size, post, tuned):
        return (f"| {bits} | {scheme} | {granularity} | {size / 1024:.1f} | {fp32_bytes / size:.2f}x "
                f"| {fp16_bytes / size:.2f}x | {_pct(post['map50_95'])} | {_drop(post['map50_95'], base['map50_95'])} "
                f"| {_pct(tuned['map50_95']) if tuned else '-'} "
                f"| {_drop(tuned['map50_95'], base['map50_95']) if tuned else '-'} "
                f"| {_drop(tuned['map50_95'], base_tuned['map50_95']) if tuned else '-'} "
                f"| {_pct(post['map50'])} | {_pct(tuned['map50']) if tuned else '-'} |")

    lines.append(row(32, "float", "-", fp32_bytes, base, reference["fp32_finetuned"]))
    for name in all_configs():  # table order, whatever order they were measured in
        config = results["configs"].get(name)
        if config:
            lines.append(row(config["weight_bits"], config["scheme"], config["granularity"], config["weight_bytes"],
                             config["post_training"], config["finetuned"]))
    lines += ["", f"FP16 reference (same layers in fp16): {fp16_bytes / 1024:.1f} KiB. The FP32 row's FT columns are "
              "the base fine-tuned in fp32 the same way: the fine-tune's own effect on mAP; `FT drop vs FP32 FT` compares each "
              "fine-tuned config with it rather than with the base."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- main


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"sanity run: configs {', '.join(QUICK_CONFIGS)}, {QUICK_FINETUNE_ITERS} fine-tune steps, "
                             "written to <out>_quick.*")
    parser.add_argument("--configs", nargs="+", metavar="PATTERN",
                        help="only configs whose name (e.g. 4b-pwlq-channel) matches one of these fnmatch patterns")
    parser.add_argument("--finetune-iters", type=int, help="fine-tune steps (the preset's default)")
    parser.add_argument("--checkpoint", help="base model .pt (default: the preset's cached base YOLO)")
    parser.add_argument("--trust-checkpoint", action="store_true", help="load a checkpoint with arbitrary pickles")
    parser.add_argument("--data", help="data.yaml (default: the preset's digit dataset)")
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--out", default="bench/quant_table", help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    if args.finetune_iters is not None and args.finetune_iters < 0:
        raise InputError(f"--finetune-iters must be >= 0, not {args.finetune_iters}")
    return args


def run(args) -> str:
    """Measure what is missing from the results file and return the markdown table."""
    preset = PRESETS[args.preset]
    configs = select_configs(args.configs or (list(QUICK_CONFIGS) if args.quick else None))
    finetune_iters = args.finetune_iters if args.finetune_iters is not None else (
        QUICK_FINETUNE_ITERS if args.quick else preset.finetune_iters)
    out = Path(args.out + ("_quick" if args.quick else ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out.with_name(out.name + ".json"), out.with_name(out.name + ".md")

    torch.set_num_threads(max(1, args.threads))
    inputs = resolve_inputs(profile="x86-host", space="yolov8", model=args.checkpoint, data=args.data,
                            preset=args.preset, trust_checkpoint=args.trust_checkpoint)
    settings = {"format": FORMAT_VERSION, "checkpoint": str(inputs.checkpoint), "data": str(inputs.data_yaml),
                "imgsz": preset.imgsz, "batch": preset.batch, "finetune_iters": finetune_iters, "seed": 0,
                "layers": len(inputs.resolved)}
    results = load_results(json_path, settings)

    def save():
        write_text_atomically(json_path, json.dumps(results, indent=2))
        if results["reference"]:
            write_text_atomically(md_path, markdown_table(results))

    if results["reference"] is None:
        print("measuring the base model (fp32 / fp16 bytes, mAP, fp32 fine-tune)", flush=True)
        results["reference"] = measure_reference(inputs, settings)
        save()
    # 4-bit configs first: they are the study's headline, and a long run may be stopped early
    todo = sorted((name for name in configs if name not in results["configs"]), key=lambda n: configs[n].weight_bits)
    print(f"{len(configs) - len(todo)} of {len(configs)} configs already in {json_path}; measuring {len(todo)}",
          flush=True)
    for number, name in enumerate(todo, 1):
        config, seconds = _timed(lambda name=name: measure_config(inputs, configs[name], settings))
        results["configs"][name] = {**config, "seconds": seconds}
        save()
        print(f"[{number}/{len(todo)}] {name}: PTQ mAP50-95 {_pct(config['post_training']['map50_95'])}, "
              f"FT {_pct(config['finetuned']['map50_95'])}, {config['weight_bytes']} B ({seconds:.0f} s)", flush=True)
    print(f"wrote {json_path} and {md_path}")
    return markdown_table(results)


def main(argv=None) -> int:
    try:
        table = run(parse_args(argv))
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
