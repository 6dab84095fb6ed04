"""Builds reused within a run: a design's latency and memory plan, kept by what determines them.

A build's speed and its activation memory depend on the graph TVM compiles - the ops, their shapes
and dtypes, which convs run as integer kernels - and not on the values baked into it (weights,
activation ranges, zero points). So a trial whose built graph equals an earlier one's (a child that
only changed weight bit-widths, sparsity or a quantization scheme computed in float, a design that
differs only in weights) reuses that build's measurement instead of compiling and timing again.

    key = graph_key(module, profile, how)   # the Relax module with its values left out
    cache.get(key)                          # the measurement fields, or None
    cache.put(key, fields, precision)       # after a build was timed

The key is the module's printed IR with every value that cannot change the compiled code's work
replaced by a placeholder: embedded constants are printed as references (never their data),
typed immediates other than index arithmetic (int64: shapes and loop extents) are blanked, and
functions are named by their normalised text, so two identical kernels the importer merged or kept
apart give the same key. Measurement settings (profile, target, measurer, threads) are part of it.

Where: `<node cache>/builds/<run id>/`, one folder per run (a figure is reused only within the run
that timed it), on the node that built it. `<key>.json` holds the fields; for builds timed on this
machine `<key>.so` keeps the library, so the front's final re-measure loads it instead of building
again. The whole `builds/` folder is kept under MAX_BYTES by removing the oldest runs' folders.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path

from edgesearch.common.files import file_sha256, write_text_atomically

BUILDS_DIR = "builds"  # under the node cache
MAX_BYTES = 2 * 2**30  # all runs' kept builds on one node
REUSED_NOTE = ("; reused: timed once in this run for an earlier design with the same built graph "
               "(weights and activation ranges do not change a build's speed or memory plan)")
KEPT_ORIGIN = "timed from the library its trial built"  # the front's re-measure (scores.remeasure_interleaved)
REBUILT_ORIGIN = "rebuilt from its candidate (its trial's library is not on this node)"
RUN_ID = re.compile(r"[0-9a-f]{16,64}")

# Typed immediates that are values (pad values, zero points, clip bounds, scales), not shapes.
_VALUES = re.compile(r"\bT\.(?:u?int8|u?int16|int32|uint32|float16|float32|float64|bool)\((?:[^()]|\([^()]*\))*\)")
_RELAX_SCALARS = re.compile(r"\bR\.const\((?:[^()]|\([^()]*\))*\)")
_LOCAL_NAMES = re.compile(r"\blv\d*\b|\bgv\d*\b")


def graph_key(module, how: str) -> str:
    """A hash of `module`'s structure (module docstring) and of `how` it is measured."""
    from tvm import tirx

    prim_names, texts = {}, {}
    for global_var, function in module.functions_items():
        name = global_var.name_hint
        if isinstance(function, tirx.PrimFunc):
            body = _normalised(function.script())
            body = re.sub(rf"\bdef {re.escape(name)}\(", "def f(", body)
            prim_names[name] = hashlib.sha256(body.encode()).hexdigest()[:16]
        else:
            texts[name] = function.script(show_meta=False)

    def by_content(match: re.Match) -> str:  # a kernel's name -> the hash of its normalised text
        return prim_names.get(match.group(0), match.group(0))

    graph = "\n".join(re.sub(r"\b[A-Za-z_]\w*\b", by_content, _values_blanked(text))
                      for _, text in sorted(texts.items()))
    return hashlib.sha256(f"{how}\n{graph}".encode()).hexdigest()[:32]


def _values_blanked(text: str) -> str:
    return _RELAX_SCALARS.sub("R.const(_)", _VALUES.sub("T.value(_)", text))


def _normalised(text: str) -> str:
    return _LOCAL_NAMES.sub("v", _values_blanked(text))


class BuildCache:
    """One run's kept builds on this node (module docstring)."""

    def __init__(self, root: Path, run_id: str):
        if not RUN_ID.fullmatch(run_id):
            raise ValueError(f"build cache run id {run_id[:20]!r} is not a hex id")
        self.root, self.folder = root, root / run_id
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)

    def library_path(self, key: str) -> Path:
        return self.folder / f"{key}.so"

    def get(self, key: str) -> dict | None:
        """The fields kept for `key` (labelled as reused), or None."""
        entry = self._entry(key)
        if entry is None:
            return None
        fields = dict(entry["fields"])
        fields["latency_source"] = fields.get("latency_source", "") + REUSED_NOTE
        return fields

    def put(self, key: str, fields: dict, precision: str) -> None:
        """Keep a timed build's fields (and its library, already written at library_path(key), with
        its hash so a later load can check it)."""
        library = self.library_path(key)
        entry = {"fields": fields, "precision": precision, "kept_at": time.time(),
                 "library_sha256": file_sha256(library) if library.is_file() else None}
        write_text_atomically(self.folder / f"{key}.json", json.dumps(entry))
        self._trim()

    def library(self, key: str) -> tuple[Path, str] | None:
        """(library path, precision label) of a kept library whose bytes match their record, or None."""
        entry = self._entry(key)
        library = self.library_path(key)
        if entry is None or not entry.get("library_sha256") or not library.is_file() or file_sha256(library) != entry["library_sha256"]:
            return None
        return library, entry["precision"]

    def _entry(self, key: str) -> dict | None:
        """What put() kept for `key`, or None."""
        try:
            return json.loads((self.folder / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None

    def _trim(self) -> None:
        """Remove the oldest other runs' folders while all runs' builds exceed MAX_BYTES."""
        runs = [(folder.stat().st_mtime, folder) for folder in self.root.iterdir()
                if folder.is_dir() and not folder.is_symlink() and folder != self.folder]
        total = _size(self.root)
        for _, folder in sorted(runs):
            if total <= MAX_BYTES:
                break
            total -= _size(folder)
            shutil.rmtree(folder, ignore_errors=True)


def _size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())
