"""MetaSchedule tunes a tiny model into a persistent database, and a second build reuses it."""

import numpy as np
import torch

from edgesearch.runners.hardware.tuning import tune_and_build


def _tiny_relax_module():
    from tvm.relax.frontend.torch import from_exported_program

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.SiLU()).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        exported = torch.export.export(net, (x,))
        reference = net(x).numpy()
    return from_exported_program(exported, keep_params_as_input=False), x.numpy(), reference


def test_tuning_persists_and_is_reused(tmp_path):
    import tvm
    from tvm import relax

    mod, x, reference = _tiny_relax_module()
    target = {"kind": "llvm", "num-cores": 2}
    executable, first = tune_and_build(mod, target, tmp_path / "db", max_trials=8, trials_per_iter=8)
    assert first["tuned_tasks"] >= 1 and first["total_tasks"] == first["tuned_tasks"]
    assert first["tuned_kernels"] >= 1 and first["unscheduled_kernels"] == 0  # the database's schedules are used
    assert (tmp_path / "db" / "database_tuning_record.json").stat().st_size > 0
    vm = relax.VirtualMachine(executable, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x, tvm.cpu()))
    out = out[0] if not hasattr(out, "numpy") else out
    assert np.abs(out.numpy() - reference).max() < 1e-4

    _, second = tune_and_build(mod, target, tmp_path / "db", max_trials=8, trials_per_iter=8)
    assert second["tuned_tasks"] == 0 and second["tune_s"] < first["tune_s"]
