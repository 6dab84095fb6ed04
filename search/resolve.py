"""A user's inputs (profile, space, data, base model) resolved and checked before anything is
written, and the plain settings a trial needs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from edgesearch.common.cache import cache_dir
from edgesearch.common.errors import InputError
from edgesearch.runners.accuracy.finetune import load_dataset_info
from edgesearch.runners.accuracy.splits import check_splittable
from edgesearch.runners.checkpoints import load_detection_model
from edgesearch.runners.hardware.profiles import HardwareProfile, load_profile
from edgesearch.search import shipping
from edgesearch.search.base_model import default_base_checkpoint
from edgesearch.search.default_data import build_digit_dataset
from edgesearch.search.presets import PRESETS
from edgesearch.search.run_config import RunConfig
from edgesearch.spaces.space import LayerChoices, Space, load_space


@dataclasses.dataclass
class Inputs:
    profile: HardwareProfile
    space: Space
    data_yaml: Path
    checkpoint: Path
    trust_checkpoint: bool
    base_model: nn.Module  # loaded from `checkpoint`
    resolved: dict[str, LayerChoices]  # per-layer choices of the space on this model


def resolve_inputs(*, profile: str, space: str, model: str | None, data: str | None, preset: str,
                   trust_checkpoint: bool = False, mnist_dir: str | None = None, seed: int = 0,
                   train_images: int | None = None, val_images: int | None = None, device: str = "auto") -> Inputs:
    """Check every input and produce the data and base model (cached; trained on `device`) - nothing
    else is written."""
    hardware = load_profile(profile)
    design_space = load_space(space)
    settings = PRESETS[preset]
    recipe = dataclasses.replace(settings.data, n_train=train_images or settings.data.n_train,
                                 n_val=val_images or settings.data.n_val)
    if data:
        data_yaml = Path(data).resolve()
        if not data_yaml.is_file():
            raise InputError(f"data.yaml {data} does not exist")
        load_dataset_info(data_yaml)
        check_splittable(data_yaml)  # the held-out images every trial is also scored on
    else:
        data_yaml = build_digit_dataset(recipe, Path(mnist_dir) if mnist_dir else None)
    if model:
        checkpoint = Path(model).resolve()
        base = load_detection_model(checkpoint, trust=trust_checkpoint)
    else:
        checkpoint = default_base_checkpoint(settings, data_yaml, seed, device)
        trust_checkpoint = False
        base = load_detection_model(checkpoint)
    resolved = design_space.resolve(base, hardware.compute_precisions, hardware.name, hardware.channel_multiple)
    return Inputs(hardware, design_space, data_yaml, checkpoint, trust_checkpoint, base, resolved)


def eval_settings(inputs: Inputs, *, imgsz: int, finetune_iters: int, batch: int, threads: int, seed: int,
                  tune_trials: int = 0, distill: bool = False, measurement: dict | None = None,
                  device: str = "auto") -> dict:
    """The plain settings a trial needs (sent to Ray workers as-is). `measurement`: a search's one
    decision about latency (decide_measurement); None: each call decides. `device`: the --device
    spec (runners/device.py), resolved where the work runs (a Ray trial: on the GPU Ray assigned it)."""
    return {
        "device": device,
        "measurement": measurement,
        "tune_trials": tune_trials,
        "distill": distill,
        "tuning_db": str(cache_dir() / "tuning" / inputs.profile.name),  # shared by every run on this profile
        "checkpoint": str(inputs.checkpoint),
        "trust_checkpoint": inputs.trust_checkpoint,
        "data_yaml": str(inputs.data_yaml),
        "profile": inputs.profile.source,  # a path, so custom profile YAMLs reach the workers too
        "imgsz": imgsz,
        "finetune_iters": finetune_iters,
        "batch": batch,
        "threads": threads,
        "seed": seed,
    }


def check_smallest_design_fits(inputs: Inputs, run: RunConfig) -> None:
    """Refuse a budget no design of the space can meet, before any search: the smallest design
    (least packed bytes per layer, int8 activations where offered) is packed and its activations
    planned by TVM."""
    budget = run.memory_budget
    if budget["bytes"] is None:
        return
    from edgesearch.runners.hardware.memory import design_memory  # loads TVM
    from edgesearch.spaces.apply import apply_candidate, smallest_candidate

    smallest = smallest_candidate(inputs.base_model, {n: layer.choices for n, layer in inputs.resolved.items()})
    memory = design_memory(apply_candidate(inputs.base_model, smallest), run.imgsz, inputs.profile.target)
    if memory["memory_bytes"] > budget["bytes"]:
        raise InputError(
            f"no design can meet the {budget['kind'].upper()} budget of {budget['bytes'] / 1024:,.0f} KiB "
            f"({budget['source']}): the smallest design of space {inputs.space.name} needs "
            f"{memory['memory_bytes'] / 1024:,.0f} KiB ({memory['weight_bytes'] / 1024:,.0f} KiB packed weights + "
            f"{memory['activation_bytes'] / 1024:,.0f} KiB planned activations); set --sram-budget or another profile")


def decide_measurement(inputs: Inputs, run: RunConfig, estimate_only: bool = False) -> RunConfig:
    """How this whole search obtains latency (measure.decide_measurement): decided once, here, so that
    one objective never mixes measured and estimated figures; a device that is there but cannot be
    built for is refused before anything is written."""
    from edgesearch.runners.hardware import measure  # loads TVM

    plan = measure.decide_measurement(inputs.profile, estimate_only=estimate_only)
    measurer = measure.measurer_for(inputs.profile, plan, tune_trials=run.tune_trials)
    print(f"latency on {inputs.profile.name}: every trial {measurer.describe()}")
    return dataclasses.replace(run, measurement=dataclasses.asdict(plan))


def ship_inputs(inputs: Inputs) -> dict:
    """The archives of the files a trial opens (search/shipping.py); an input that cannot be shipped
    is refused here, before anything is written."""
    return shipping.pack_inputs(checkpoint=inputs.checkpoint, data_yaml=inputs.data_yaml,
                                profile=Path(inputs.profile.source))
