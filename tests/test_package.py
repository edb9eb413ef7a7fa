"""ffsd-tf as an installed package: console scripts that work outside the repository.

CI installs the project with ``pip install .`` into its venv (``.ci/run``); a checkout whose venv
lacks it skips with a reason. The scripts run from a scratch directory with no PYTHONPATH, so
they can only find the installed ``ffsd_tf`` (and no top-level ``export``).
"""

import os
import subprocess
import sys

import pytest

BIN = os.path.dirname(sys.executable)
SCRIPTS = {  # script -> (arguments, a line its help must show)
    "ffsd-train": (["--helpfull"], "--partial_batch"),
    "ffsd-export": (["--help"], "--export_dir"),
    "ffsd-report": (["--help"], "--baseline"),
    "ffsd-visualize": (["--help"], "--images"),
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_script_runs_outside_the_repository(script, tmp_path):
    path = os.path.join(BIN, script)
    if not os.path.exists(path):
        pytest.skip(f"{script} is not installed in {BIN}: run pip install . (CI does)")
    args, needle = SCRIPTS[script]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    proc = subprocess.run([path, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert needle in proc.stdout + proc.stderr


def test_installed_package_has_no_top_level_export(tmp_path):
    """Only ``ffsd_tf`` is installed: a top-level ``export`` package would clash with anything."""
    if not os.path.exists(os.path.join(BIN, "ffsd-train")):
        pytest.skip("ffsd-tf is not installed: run pip install . (CI does)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import importlib.util as u; print(u.find_spec('export') is None, u.find_spec('ffsd_tf.export') is not None)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.split() == ["True", "True"], proc.stderr[-2000:]
