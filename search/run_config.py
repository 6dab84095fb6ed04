"""One search's settings: a typed, frozen RunConfig with one set of defaults.

Built once by the CLI (`search run`, and each search of a `search batch` jobs file, which becomes
the same `search run` arguments), written to the run folder's run.json when the run starts, and
read back from it by `--resume` (`RunConfig.read`). Every default lives here: a field's default
below, or the preset's (trials, population, input size, fine-tune steps, batch) where the preset
decides. Fields that grant trust are never read from run.json: `trust_checkpoint` is the
command line's on every invocation.

Run folders written before a setting existed are read with what those runs did (LEGACY below);
a run.json that is not one of ours is refused in one line.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from edgesearch.common.errors import InputError
from edgesearch.common.files import write_text_atomically
from edgesearch.search.presets import STRATEGIES

RUN_FILE = "run.json"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    # what is searched
    run_name: str  # the run folder's name
    profile: str  # hardware profile name
    profile_file: str  # its YAML (a path, so that custom profiles reach the workers)
    space: str
    space_file: str
    space_sha256: str  # a resume refuses a space file that changed (the study's choices would not match); "": unknown
    model: str  # base checkpoint
    data: str  # data.yaml
    memory_budget: dict  # {kind: sram | dram, bytes, source: profile | --sram-budget}: the hard constraint
    # how much, and how each trial is scored (the preset's values unless given)
    trials: int  # scored trials, recipes included
    population: int  # NSGA-II population
    imgsz: int
    finetune_iters: int
    batch: int
    parallel: int  # trials in flight at once
    preset: str = "default"
    strategy: str = STRATEGIES[0]
    seed: int = 0
    tune_trials: int = 0  # > 0: MetaSchedule-tuned builds for the local measurer
    distill: bool = False
    rung_steps: int = 0  # successive halving: moves are validated after this many fine-tune steps (0: never)
    build_reuse: bool = True  # a design whose built graph was timed before in the run reuses that figure
    child_steps: int = 0  # a child of a scored design starts from its weights with these steps (0: from the base)
    recover_steps: int = 0  # the recovery stage's extra fine-tune steps for the front's structural designs (0: none)
    export_format: str = "onnx"  # the profile's: what the report's take-away exports to (`search export --format`)
    # optional constraints
    max_map_drop: float | None = None  # accuracy floor, relative to max(base, fp32 control) (budgets)
    latency_budget_ms: float | None = None
    # decided once when the run starts (runners/hardware/measure.MeasurementPlan as plain data)
    measurement: dict | None = None
    sram_budget_bytes: int | None = None  # the profile's SRAM (what runs before memory_budget were held to)
    # this invocation's, never run.json's
    trust_checkpoint: bool = False

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def write(self, run_dir: Path) -> None:
        write_text_atomically(Path(run_dir) / RUN_FILE, json.dumps(self.to_json(), indent=2))

    @classmethod
    def read(cls, run_dir: Path, *, trust_checkpoint: bool = False) -> RunConfig:
        """The run.json of `run_dir` (runs of earlier versions upgraded: LEGACY); `trust_checkpoint`
        is this command line's."""
        path = Path(run_dir) / RUN_FILE
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"{path} is not a readable run.json ({error})") from None
        if not isinstance(raw, dict):
            raise InputError(f"{path} is not a run.json (not a mapping)")
        return cls.from_json({"run_name": Path(run_dir).resolve().name, **raw}, where=str(path),
                             trust_checkpoint=trust_checkpoint)

    @classmethod
    def from_json(cls, raw: dict, *, where: str = RUN_FILE, trust_checkpoint: bool = False) -> RunConfig:
        values = upgraded(raw)
        values["trust_checkpoint"] = trust_checkpoint  # never the folder's
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        missing = sorted(name for name, f in fields.items() if name not in values
                         and f.default is dataclasses.MISSING)
        if unknown or missing:
            raise InputError(f"{where} is not a run folder this edgesearch can resume: "
                             + "; ".join(part for part in (f"unknown settings {', '.join(unknown)}" if unknown else "",
                                                           f"missing {', '.join(missing)}" if missing else "") if part))
        return cls(**values)

    def budgets(self, base: dict, control: dict | None = None) -> dict:
        """The constraints of the study: memory (hard), latency (if asked), accuracy floor (if asked):
        `max_map_drop` below the higher of the unmodified base and the fp32 `control` (the base given
        the designs' own fine-tune, once scored), as the issues define "within X %"."""
        drop = self.max_map_drop
        reference = max(base["map50_95"], control["map50_95"] if control else 0.0)
        return {"memory_bytes": self.memory_budget["bytes"], "memory_kind": self.memory_budget["kind"],
                "latency_ms": self.latency_budget_ms,
                "map_floor": reference * (1 - drop) if drop else None}


# What runs of earlier versions did where their run.json lacks a setting (or named it otherwise).
LEGACY_STRATEGY = "nsga2"  # runs from before the guided search


def upgraded(raw: dict) -> dict:
    """A run.json of any earlier version as this version's settings."""
    values = dict(raw)
    values.setdefault("strategy", LEGACY_STRATEGY)
    values.setdefault("space_sha256", "")  # runs from before the check: not known
    values.setdefault("rung_steps", 0)  # runs from before successive halving fine-tuned every design fully
    values.setdefault("recover_steps", 0)  # runs from before the recovery stage had none
    if "memory_budget" not in values and "sram_budget_bytes" in values:
        values["memory_budget"] = {"kind": "sram", "bytes": values["sram_budget_bytes"], "source": "profile"}
    mode, why = values.pop("latency_mode", None), values.pop("latency_mode_why", None)
    if "measurement" not in values:  # RPC profiles recorded latency_mode before the measurement plan
        values["measurement"] = ({"kind": "estimate", "why": why or "no device when the run started"}
                                 if mode == "estimated" else {"kind": "rpc"} if mode == "measured" else None)
    return values
