"""Block helpers of a TIR schedule that the fixed CPU schedule (tvm_schedule.py) and the integer
kernels' schedules (integer_kernels.py) both use."""

from __future__ import annotations

from tvm import tirx


def iter_kinds(sch, block) -> str:
    kinds = {tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}
    return "".join(kinds.get(iv.iter_type, "O") for iv in sch.get(block).iter_vars)


def root_blocks(sch):
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def inline_all(sch, keep: set[str]) -> None:
    """compute_inline every spatial block not in `keep`, until nothing more can be inlined."""
    changed = True
    while changed:
        changed = False
        for block in root_blocks(sch):
            if sch.get(block).name_hint in keep or "R" in iter_kinds(sch, block):
                continue
            try:
                sch.compute_inline(block)
                changed = True
                break
            except Exception:  # noqa: BLE001  (TVM raises several error types when a block cannot be inlined)
                pass
