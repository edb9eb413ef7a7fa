"""The trainer is a library (issue 29): ``ffsd_tf.trainer`` and what ``FFSD.fit`` uses never import
the run directory, the run's callbacks, flags or configs, at import time or inside a function.

``config`` builds ``trainer.FFSDConfig`` (config -> trainer); the other way would be a circle
(trainer -> callbacks -> rundir -> config -> trainer). Checked twice: what ``import ffsd_tf.trainer``
loads (a fresh interpreter), and every import statement of the modules it can reach, read from the
source, lazy ones included (``FFSD.fit`` imports its progress display when it is called).
"""

import ast
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, child_env

# The run's layer: a library module importing one of these knows about a run directory or the CLI.
RUN_LAYER = {"ffsd_tf.rundir", "ffsd_tf.callbacks", "ffsd_tf.config", "ffsd_tf.flags", "ffsd_tf.run",
             "ffsd_tf.report", "ffsd_tf.cli"}
LIBRARY = ("ffsd_tf.trainer", "ffsd_tf.progress")


def module_file(name: str) -> str | None:
    base = os.path.join(ROOT, *name.split("."))
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.exists(path):
            return path
    return None


def imported_modules(name: str) -> set[str]:
    """The ffsd_tf modules that module ``name``'s source imports anywhere (functions included)."""
    path = module_file(name)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # "from ffsd_tf import rundir" names a module
    return {m for m in found if m.startswith("ffsd_tf") and module_file(m) is not None}


def reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += imported_modules(name)
    return seen


@pytest.mark.parametrize("module", LIBRARY)
def test_no_import_statement_reachable_from_the_library_names_the_run_layer(module):
    assert reachable(module) & RUN_LAYER == set()


def test_the_static_scan_sees_a_lazy_import():
    """The scan is able to fail: the run's entry point reaches the run layer through its imports."""
    assert {"ffsd_tf.rundir", "ffsd_tf.config", "ffsd_tf.callbacks"} <= reachable("ffsd_tf.run")
    assert "ffsd_tf.trainer" in reachable("ffsd_tf.config")  # config -> trainer, the allowed direction


def test_importing_the_trainer_loads_no_module_of_the_run_layer():
    code = ("import json, sys, ffsd_tf.trainer, ffsd_tf.progress; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('ffsd_tf'))))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert "ffsd_tf.trainer" in loaded and "ffsd_tf.progress" in loaded
    assert loaded & RUN_LAYER == set()


def test_old_import_paths_still_work():
    from ffsd_tf import callbacks, progress

    assert callbacks.CompactProgress is progress.CompactProgress
    assert callbacks.CollapseWarning is progress.CollapseWarning
