"""One run contract (issue 16): the typed RunConfig, the run directory module, and their single sources.

* A run written by the CLI reads back through ``ffsd_tf.rundir`` from Python: the RunConfig equals
  the flags' field by field, the model is restored, the data is rebuilt as it was trained.
* The flags and RunConfig are one set of names and defaults; config.json round-trips.
* "grep finds one definition": the run directory's file names, the results rows and labels and the
  readers of flags.txt / config.json are defined in ``rundir`` only; no ffsd_tf module imports
  another's ``_private`` name; ``report`` imports no TensorFlow.
"""

import ast
import dataclasses
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

from tests.conftest import ROOT, SYNTHETIC_8PX, child_env, run_cli

FLAGS = flags.FLAGS
RUN = [*SYNTHETIC_8PX, "--synthetic_classes=4", "--epochs=1", "--milestones=", "--lr=0.05", "--seed=5",
       "--lambda_kl_schedule=exp_warmup:3", "--nonesterov", "--verbose=quiet"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("contract") / "run")
    proc = run_cli([*RUN, f"--output_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


# ------------------------------------------------------------------------------------ round trip
def test_a_cli_run_reads_back_through_the_run_directory_module(cli_run, parsed):
    from ffsd_tf import flags as ffsd_flags
    from ffsd_tf import rundir
    from ffsd_tf.data import load_dataset

    config, meta = rundir.read_config(cli_run)
    parsed(*RUN, f"--output_dir={cli_run}")
    expected = ffsd_flags.run_config().with_data(meta["num_classes"], meta["image_shape"])
    for section in ("data", "cohort", "optimization", "loss_weights", "runtime"):
        mine, theirs = getattr(config, section), getattr(expected, section)
        for field in dataclasses.fields(mine):
            assert getattr(mine, field.name) == getattr(theirs, field.name), (section, field.name)
    assert config == expected
    assert (config.runtime.seed, config.optimization.lr, config.optimization.nesterov) == (5, 0.05, False)
    assert config.loss_weights.schedules["kl"] == "exp_warmup:3"

    model, restored_meta, ckpt = rundir.restore_model(cli_run)
    assert model.config == config.cohort and restored_meta == meta and ckpt.endswith("ckpt-1")
    bundle = rundir.load_run_data(cli_run)
    trained = load_dataset(config.data.dataset, **config.data.load_arguments(config.runtime.seed))
    assert list(bundle.class_names) == meta["class_names"] == list(trained.class_names)
    np.testing.assert_array_equal(bundle.mean, meta["mean"])
    np.testing.assert_array_equal(bundle.std, meta["std"])
    np.testing.assert_array_equal(bundle.x_test, trained.x_test)
    # The restored leader on the rebuilt test split scores what training measured after epoch 1.
    logits = model.leader(bundle.normalize(bundle.x_test), training=False)["logits"]
    accuracy = float(np.mean(np.argmax(logits, -1) == bundle.y_test))
    history = rundir.read_history(os.path.join(cli_run, rundir.HISTORY))
    assert accuracy == pytest.approx(history[-1]["val_leader/acc"], abs=1e-6)


def test_flags_txt_is_written_for_replay_and_never_read_back(cli_run, tmp_path):
    import shutil

    from ffsd_tf import report, rundir

    copy = str(tmp_path / "run")
    shutil.copytree(cli_run, copy)
    with open(os.path.join(copy, rundir.FLAGS_FILE), "w") as f:
        f.write("--seed=999\n--image_size=oops\n")
    assert rundir.read_config(copy) == rundir.read_config(cli_run)
    assert report.load_run(copy)["seed"] == 5


# ------------------------------------------------------------------------------------ RunConfig
def test_every_flag_is_a_setting_or_cohort_field_with_the_same_default(parsed):
    from ffsd_tf import flags as ffsd_flags
    from ffsd_tf.config import RunConfig, default

    parsed()
    module_flags = {f.name: f for f in FLAGS.get_flags_for_module(sys.modules[ffsd_flags.__name__])}
    config = RunConfig.from_flags(FLAGS)
    names = set(config.settings()) | {f.name for f in dataclasses.fields(config.cohort)}
    assert set(module_flags) == names - {"num_classes", "input_shape", "teacher"}
    from ffsd_tf.recipes import set_flag_values

    filled = set_flag_values(default("loss_weights"))  # flags the --loss_weights set fills: default None
    settings = {**config.settings(), **dataclasses.asdict(config.cohort)}
    for name, flag in module_flags.items():
        if name in filled:
            assert flag.default is None, name
            value = settings[name] if name in settings else None
            if value is not None:  # the config's value with no flag given is the default set's
                assert value == filled[name], name
            continue
        want = default(name)
        got = [int(m) for m in flag.default] if name == "milestones" else flag.default
        assert got == (list(want) if isinstance(want, tuple) else want), name
    weights = config.loss_weights.functions()
    for key in weights:  # the weights themselves: the default set's, epoch by epoch
        want = set_flag_values(default("loss_weights"))[f"lambda_{key}"]
        assert abs(weights[key](30) - want) < 1e-9, key


def test_config_json_round_trips_and_replace_names_flags():
    from ffsd_tf.config import RunConfig
    from ffsd_tf.trainer import FFSDConfig

    config = RunConfig(FFSDConfig(model="resnet8", num_classes=4, input_shape=(8, 8, 3)))
    changed = config.replace(seed=3, milestones=[2, 4], lambda_kl=0.5, lambda_kl_schedule="linear_warmup:2")
    back = RunConfig.from_dict(json.loads(json.dumps(changed.to_dict())))
    assert back == changed and back.optimization.milestones == (2, 4) and back.loss_weights.values["kl"] == 0.5
    assert back.settings()["milestones"] == [2, 4] and back.runtime.seed == 3


@pytest.mark.parametrize("change, needle", [
    (dict(lr=float("nan")), "--lr must be a finite number"),
    (dict(milestones=[5], epochs=3), "reach beyond --epochs=3"),
    (dict(batch_size=30), "not divisible by the 4 replicas"),
    (dict(lambda_fusion=-1.0), "--lambda_fusion must be >= 0"),
    (dict(lambda_kl_schedule="warmup"), "bad weight schedule"),
    (dict(dataset="nope"), "--dataset=nope is unknown"),
])
def test_validate_names_the_flag(change, needle):
    from ffsd_tf.config import ConfigError, RunConfig
    from ffsd_tf.trainer import FFSDConfig

    config = RunConfig(FFSDConfig(model="resnet8")).replace(epochs=10, milestones=[])
    config.validate(num_replicas=4)
    with pytest.raises(ConfigError, match=needle):
        config.replace(**change).validate(num_replicas=4)


@pytest.mark.parametrize("damage, needle", [
    (lambda d: d["runtime"].update(seed="1"), "seed='1' is not an integer"),
    (lambda d: d["data"].update(bogus=1), "unknown setting data.bogus"),
    (lambda d: d.update(optimization=[]), "'optimization' is not a section"),
    (lambda d: d["loss_weights"]["values"].update(nope=1.0), "unknown loss weight 'nope'"),
    (lambda d: d.update(version=99), "layout version 99"),
])
def test_a_damaged_config_json_is_one_line_naming_it(cli_run, tmp_path, damage, needle):
    import shutil

    from ffsd_tf import rundir

    copy = str(tmp_path / "run")
    shutil.copytree(cli_run, copy)
    path = os.path.join(copy, rundir.CONFIG)
    saved = json.load(open(path))
    damage(saved)
    json.dump(saved, open(path, "w"))
    with pytest.raises(rundir.RunDirError) as info:
        rundir.read_config(copy)
    assert "config.json" in str(info.value) and needle in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------ single sources
def _modules():
    for path in sorted(glob.glob(os.path.join(ROOT, "ffsd_tf", "**", "*.py"), recursive=True)):
        yield os.path.relpath(path, ROOT), ast.parse(open(path).read())


def _strings(tree):
    """Every string constant that is not a docstring."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings]


def test_run_directory_names_rows_and_readers_are_defined_once():
    from ffsd_tf import rundir

    names = {rundir.CONFIG, rundir.FLAGS_FILE, rundir.HISTORY, rundir.RESULTS, rundir.RESULTS_TABLE, rundir.CHECKPOINTS}
    labels = set(rundir.MODEL_LABELS.values())
    readers = {"read_json", "read_flagfile", "parse_flag_lines", "read_config", "read_config_json", "load_config",
               "summarize", "results_table"}
    found = {"names": {}, "labels": {}, "readers": {}}
    for path, tree in _modules():
        for s in _strings(tree):
            for name in names:
                if s == name or s.endswith("/" + name):
                    found["names"].setdefault(name, set()).add(path)
            if s in labels:
                found["labels"].setdefault(s, set()).add(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name in readers | {"_read_json"}:
                found["readers"].setdefault(node.name, set()).add(path)
    assert found["names"] == {name: {"ffsd_tf/rundir.py"} for name in names}
    assert found["labels"] == {label: {"ffsd_tf/rundir.py"} for label in labels}
    # report's _read_json turns rundir.read_json's error into its own; it reads nothing itself.
    assert found["readers"] == {**{r: {"ffsd_tf/rundir.py"} for r in readers}, "_read_json": {"ffsd_tf/report.py"}}


def test_no_module_imports_another_modules_private_names():
    offences = []
    for path, tree in _modules():
        aliases = {}  # local name -> ffsd_tf module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ffsd_tf"):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        offences.append(f"{path}: from {node.module} import {a.name}")
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("ffsd_tf"):
                        aliases[a.asname or a.name.split(".")[0]] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                offences.append(f"{path}:{node.lineno}: {node.value.id}.{node.attr}")
    assert offences == []


def test_report_imports_no_tensorflow():
    code = ("import sys, ffsd_tf.report, ffsd_tf.rundir, ffsd_tf.config; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr[-2000:]
