"""The run store: run directories, the store lock and post-passes (no torch needed).

- :mod:`qgen.store.rundir`: :class:`RunDir` (files, state, spec/result/weights read once),
  :func:`publish_run`, :func:`write_error`;
- :mod:`qgen.store.lock`: one writer per store, clean-up after a killed one;
- :mod:`qgen.store.postpass`: the post-pass contract (measures, robustness, theory).
"""

from qgen.store.lock import LOCK_FILE, lock_holder, remove_stale, store_lock
from qgen.store.postpass import (
    PostPass,
    Resources,
    check_postpass_input,
    get_postpass,
    register_postpass,
    run_postpass,
    run_postpass_many,
)
from qgen.store.rundir import (
    ERROR_FILE,
    INIT_FILE,
    MODEL_FILE,
    RESULT_FILE,
    RUN_FILES,
    SPEC_FILE,
    RunDir,
    light_versions,
    now_iso,
    publish_files,
    publish_run,
    run_dirs,
    write_error,
)

__all__ = [
    "ERROR_FILE", "INIT_FILE", "LOCK_FILE", "MODEL_FILE", "RESULT_FILE", "RUN_FILES",
    "SPEC_FILE", "PostPass", "Resources", "RunDir", "check_postpass_input", "get_postpass",
    "light_versions", "lock_holder", "now_iso", "publish_files", "publish_run",
    "register_postpass", "remove_stale", "run_dirs", "run_postpass", "run_postpass_many",
    "store_lock", "write_error",
]
