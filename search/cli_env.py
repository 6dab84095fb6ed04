"""Environment every edgesearch process sets before torch or TVM is loaded.

OMP_WAIT_POLICY=PASSIVE: torch and TVM each bring an OpenMP runtime; with both loaded in one
process their idle threads spin and starve each other. Measured on this 2-core machine: 6 fine-tune
steps of YOLOv8n took 1.5 s without TVM imported, 11-21 s with it imported, 1.8 s with PASSIVE.
YOLO_OFFLINE=1: there is no model hub to reach; never let ultralytics try to download.
TVM_BIND_THREADS=0: when TVM's thread pool starts (a trial's first timing, or a label asking its
size), it pins the calling thread to as many cores as it has threads, and every thread started
afterwards inherits that. At one thread per trial that is core 0: a Ray worker's later fine-tunes
ran on core 0, and with two trials in flight both workers shared it while core 1 idled. Measured
on this 2-core machine, 10 trials of the default search (caches warm): trials 6.7 min pinned, 3.6
min unpinned; fine-tune 53.2 s and 25.9 s per trial (medians), the same designs and mAP.
"""

import os

QUIET = "EDGESEARCH_QUIET"
PROCESS_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "YOLO_OFFLINE": "1", "TVM_BIND_THREADS": "0"}


def apply_process_env() -> None:
    """Set PROCESS_ENV (values the user already set win); call before torch or TVM is imported."""
    for name, value in PROCESS_ENV.items():
        os.environ.setdefault(name, value)


def quiet_console() -> None:
    """One progress bar per stage instead of library chatter (`--verbose` keeps it all): ultralytics'
    per-batch lines and dataset scans, Optuna's per-trial INFO lines, and the FutureWarnings that
    torch.export repeats for every build. Call before ultralytics is imported."""
    import warnings

    os.environ["YOLO_VERBOSE"] = "False"
    os.environ[QUIET] = "1"  # read where optuna is imported (study.py): importing it here would slow every command
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")
    warnings.filterwarnings("ignore", message=".*were assigned during export.*")  # every torch.export of a YOLO

