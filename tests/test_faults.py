"""Fault injection: SIGKILL at every phase of a run, damaged checkpoints, bad flagfiles, bad data, bad exports.

Kill tests run ``python -m ffsd_tf.run`` through a small harness (``HARNESS``): the same program
plus one hook that SIGKILLs the process when it reaches the phase named in ``FFSD_TEST_KILL`` (a
train step, SaveV2 writing ``ckpt-N_temp/``, TF's checkpoint-state update, the gap between the
checkpoint and ``history.json``, an evaluation batch, CheckpointManager's sweep of old
checkpoints, a step of the export), at once or after a seeded random delay from a timer thread,
so the kill lands *inside* what runs then. No product code changes; the hooks only pick *when*.
The kills form a chain in one run directory (each rerun of the same command is the next kill,
since every process start costs ~7 s). ``FFSD_FAULT_SEED`` moves the random points,
``FFSD_FAULT_TRIALS=N`` runs N chains (soak).

After every kill: ``checkpoints/checkpoint`` parses; every checkpoint it lists either reads back
whole and equals the uninterrupted run's checkpoint of that epoch, or is absent altogether (TF's
sweep lists, deletes, lists again); the newest one always exists; ``history.json`` parses, is
1..m and lists every epoch up to the newest checkpoint; the export folder holds no partial numeric
version. The last rerun must end with history epochs [1, 2, 3], the uninterrupted run's final
weights and one complete export version.
"""

import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import ROOT, SYNTHETIC, child_env

TINY = [*SYNTHETIC, "--milestones=", "--epochs=3", "--verbose=quiet"]
STEPS, EVAL_BATCHES = 256 // 32, 128 // 32
SEED = int(os.environ.get("FFSD_FAULT_SEED", "20240"))
TRIALS = int(os.environ.get("FFSD_FAULT_TRIALS", "1"))
TIMEOUT = 300

# The training program, unchanged, plus one kill hook chosen by FFSD_TEST_KILL="<phase>:<args>".
HARNESS = r"""
import os, signal, sys, threading, time
from ffsd_tf.quiet import import_tensorflow_quietly
tf = import_tensorflow_quietly()
from absl import app
from tensorflow.python.checkpoint import checkpoint_management as cm
from ffsd_tf import callbacks, run, rundir
import ffsd_tf.export.serving, ffsd_tf.export.tflite

phase, *args = os.environ["FFSD_TEST_KILL"].split(":")
now = {"epoch": 0, "saving": 0}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def die_in(seconds):
    threading.Timer(float(seconds), die).start()  # from another thread: lands inside what runs then

def ckpt_dir():
    return os.path.join(run.FLAGS.output_dir, rundir.CHECKPOINTS)

Hook = callbacks.StopOnNonFinite  # the run's first callback: its hooks run before EpochCheckpoint's

def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch
    now["epoch"] = epoch + 1

def on_epoch_end(self, epoch, logs=None):
    now["saving"] = epoch + 1
    if phase == "checkpoint" and epoch + 1 == int(args[0]):  # SIGKILL once ckpt-N_temp/ appears, + a delay
        target = os.path.join(ckpt_dir(), f"ckpt-{epoch + 1}_temp")
        def watch():
            deadline = time.time() + 60
            while time.time() < deadline:
                if os.path.exists(target):
                    time.sleep(float(args[1]))
                    die()
                time.sleep(0.0002)
        threading.Thread(target=watch, daemon=True).start()

def on_train_batch_begin(self, batch, logs=None):
    if phase == "step" and now["epoch"] == int(args[0]) and batch + 1 == int(args[1]):
        die_in(args[2])

def on_test_batch_begin(self, batch, logs=None):
    if phase == "eval" and now["epoch"] == int(args[0]) and batch + 1 == int(args[1]):
        die_in(args[2])

Hook.on_epoch_begin, Hook.on_epoch_end = on_epoch_begin, on_epoch_end
Hook.on_train_batch_begin, Hook.on_test_batch_begin = on_train_batch_begin, on_test_batch_begin

if phase == "unlisted":  # ckpt-N files complete, the state file does not list them yet
    real_update = cm.update_checkpoint_state_internal
    def update(*a, **k):
        if now["saving"] == int(args[0]):
            die()
        return real_update(*a, **k)
    cm.update_checkpoint_state_internal = update
elif phase == "sweep":  # CheckpointManager listed ckpt-N and deletes the oldest: kill after its first unlink
    real_delete = cm._delete_file_if_exists
    def delete(filespec):
        real_delete(filespec)
        if now["saving"] == int(args[0]):
            die()
    cm._delete_file_if_exists = delete
elif phase == "between":  # epoch N is in exactly one of (checkpoint state, history.json), whichever comes first
    real_write = rundir.write_json_atomic
    def listed(n):
        state = tf.train.get_checkpoint_state(ckpt_dir())
        return bool(state) and state.model_checkpoint_path.endswith(f"ckpt-{n}")
    def write(path, obj):
        hit = path.endswith(rundir.HISTORY) and obj and obj[-1]["epoch"] == int(args[0])
        if hit and listed(int(args[0])):
            die()  # checkpoint first, history next: kill between them
        real_write(path, obj)
        if hit:
            die()  # history first, checkpoint next: kill between them
    rundir.write_json_atomic = write
elif phase == "export":
    stage, delay = args
    if stage == "savedmodel":
        real_save = ffsd_tf.export.serving.save
        def save(module, path):
            die_in(delay)
            return real_save(module, path)
        ffsd_tf.export.serving.save = save
    else:
        real_convert = ffsd_tf.export.tflite.convert
        def convert(concrete, trackable, fmt, representative=None):
            if fmt == stage:
                die_in(delay)
            return real_convert(concrete, trackable, fmt, representative)
        ffsd_tf.export.tflite.convert = convert

app.run(run.main, flags_parser=run.flags_parser())
"""


def train(args, kill=None, timeout=TIMEOUT):
    """``python -m ffsd_tf.run ARGS``, or the same through the kill harness."""
    if kill is None:
        cmd, env = [sys.executable, "-m", "ffsd_tf.run", *args], child_env()
    else:
        cmd, env = [sys.executable, "-c", HARNESS, *args], child_env(FFSD_TEST_KILL=kill)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def export_cli(*args, timeout=TIMEOUT):
    env = child_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL")
    return subprocess.run([sys.executable, "-m", "export", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def one_error_line(proc, needle, code=2, allow_warnings=False):
    """Exit ``code``; stderr is one ``error: ...`` line naming ``needle`` (after checkpoint warnings if allowed)."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    if allow_warnings:
        assert all(line.startswith("warning: checkpoint ") for line in lines[:-1]), proc.stderr
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    return lines[0]


# ------------------------------------------------------------------------------------ checks
def _checkpoint_state(path):
    """Every tensor of a checkpoint (as tests/test_cli.py compares them); reading checks each CRC."""
    reader = tf.train.load_checkpoint(path)
    names = [n for n, _ in tf.train.list_variables(path) if not n.startswith("_CHECKPOINTABLE")]
    return {n: reader.get_tensor(n) for n in names}


def close(a: dict, b: dict) -> str | None:
    """None if the two checkpoints hold the same tensors (floats to 1e-5), else what differs."""
    if a.keys() != b.keys():
        return f"different variables: {sorted(set(a) ^ set(b))[:5]}"
    for k in a:
        if a[k].dtype.kind == "f":
            if not np.allclose(a[k], b[k], rtol=1e-5, atol=1e-6):
                return f"{k} differs (max |diff| {np.max(np.abs(a[k] - b[k]))})"
        elif not np.array_equal(a[k], b[k]):
            return f"{k} differs ({a[k]} vs {b[k]})"
    return None


VERSION_FILES = ("saved_model.pb", "variables/variables.index", "report.json", "report.md",
                 *(f"tflite/leader_{f}.tflite" for f in ("fp32", "fp16", "dynamic", "int8")))


def check_export_dir(export_dir: str) -> tuple[list[str], list[str], list[str]]:
    """(problems, numeric versions, leftover temporary folders) of an export folder."""
    if not os.path.isdir(export_dir):
        return [], [], []
    names = sorted(os.listdir(export_dir))
    versions = [n for n in names if n.isdigit()]
    problems = [f"partial version {v}: lacks {f}" for v in versions for f in VERSION_FILES
                if not os.path.exists(os.path.join(export_dir, v, f))]
    return problems, versions, [n for n in names if n.startswith(".tmp-")]


def check_run_dir(out: str, reference: dict) -> dict:
    """The invariants that must hold after a kill at any point: problems, notes, epochs history lacks."""
    found = {"problems": [], "notes": [], "history_lacks": set()}
    problems, notes = found["problems"], found["notes"]
    ckpt_dir = os.path.join(out, "checkpoints")
    newest = 0
    try:
        state = tf.train.get_checkpoint_state(ckpt_dir)
    except Exception as e:  # noqa: BLE001 - a damaged state file is a finding, not a test error
        problems.append(f"checkpoints/checkpoint does not parse: {e}")
        state = None
    if state is not None:
        latest = os.path.basename(state.model_checkpoint_path)
        for path in state.all_model_checkpoint_paths:
            path = path if os.path.isabs(path) else os.path.join(ckpt_dir, path)
            name = os.path.basename(path)
            if not os.path.exists(path + ".index"):
                if name == latest:
                    problems.append(f"the newest listed checkpoint {name} does not exist")
                else:
                    notes.append(f"{name} is listed but deleted (TF's sweep lists, deletes, lists again)")
                continue
            try:
                tensors = _checkpoint_state(path)
            except Exception as e:  # noqa: BLE001
                problems.append(f"listed checkpoint {name} does not read back: {str(e).splitlines()[0][:200]}")
                continue
            diff = close(tensors, reference["states"][int(name.rsplit("-", 1)[1])])
            if diff:
                problems.append(f"listed checkpoint {name} differs from the uninterrupted run's: {diff}")
        newest = int(latest.rsplit("-", 1)[1])
    temps = [n for n in os.listdir(ckpt_dir) if n.endswith("_temp")] if os.path.isdir(ckpt_dir) else []
    if temps:
        notes.append(f"TF's temporary checkpoint folders left: {temps}")
    history_path = os.path.join(out, "history.json")
    epochs = []
    if os.path.exists(history_path):
        try:
            epochs = [h["epoch"] for h in json.load(open(history_path))]
        except Exception as e:  # noqa: BLE001
            problems.append(f"history.json does not parse: {e}")
        if epochs != sorted(set(epochs)):
            problems.append(f"history.json epochs {epochs} are not increasing")
    # A resumed run keeps history entries up to the restored epoch and cannot recreate missing ones.
    found["history_lacks"] = set(range(1, newest + 1)) - set(epochs)
    for name in ("config.json", "results.json"):
        if os.path.exists(os.path.join(out, name)):
            try:
                json.load(open(os.path.join(out, name)))
            except Exception as e:  # noqa: BLE001
                problems.append(f"{name} does not parse: {e}")
    export_problems, _, temps = check_export_dir(os.path.join(out, "export"))
    problems += export_problems
    if temps:
        notes.append(f"export temporary folders left: {temps}")
    return found


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: every epoch's checkpoint."""
    out = str(tmp_path_factory.mktemp("reference") / "run")
    proc = train(TINY + [f"--output_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    states = {n: _checkpoint_state(os.path.join(out, "checkpoints", f"ckpt-{n}")) for n in (1, 2, 3)}
    iterations = [k for k in states[3] if "iterations" in k]
    assert len(iterations) == 4 and all(int(states[3][k]) == 3 * STEPS for k in iterations)
    return {"dir": out, "states": states}


# The kill chain: one run directory, one command, killed at each point in turn; every rerun is
# the next kill (a process start costs ~7 s, so kills share them). --keep_checkpoints=2 makes the
# epoch-3 save delete ckpt-1; --export adds the export to the same command.
CHAIN_FLAGS = ["--keep_checkpoints=2", "--export"]
KILLS = ["train-step", "checkpoint-write", "checkpoint-unlisted", "checkpoint-then-history", "evaluation",
         "checkpoint-sweep", "export"]


def _kill_specs(trial: int) -> dict:
    """kill name -> (FFSD_TEST_KILL, what it hits); random points from a seeded generator."""
    rng = random.Random(f"{SEED}-{trial}")
    fmt = rng.choice(["savedmodel", "fp32", "fp16", "dynamic", "int8"])
    return {
        "train-step": (f"step:1:{rng.randint(1, STEPS)}:{rng.uniform(0, 0.05):.4f}",
                       "a train step of epoch 1 (no checkpoint yet)"),
        "checkpoint-write": (f"checkpoint:1:{rng.uniform(0, 0.004):.4f}",
                             "SaveV2/MergeV2 writing ckpt-1_temp/ (random point of the write)"),
        "checkpoint-unlisted": ("unlisted:1", "ckpt-1 files complete, the checkpoint state not yet updated"),
        # The rerun after "unlisted" resumes from the complete, unlisted ckpt-1 (rundir.find_checkpoints
        # scans ckpt-N files), so the next kill is in epoch 2.
        "checkpoint-then-history": ("between:2", "between the epoch-2 checkpoint and history.json's epoch-2 entry"),
        "evaluation": (f"eval:2:{rng.randint(1, EVAL_BATCHES)}:{rng.uniform(0, 0.02):.4f}",
                       "an evaluation batch after epoch 2"),
        "checkpoint-sweep": ("sweep:3", "CheckpointManager deleting ckpt-1 after listing ckpt-3"),
        "export": (f"export:{fmt}:{rng.uniform(0, 0.3):.3f}", f"--export, while writing {fmt}"),
    }


def _run_chain(trial: int, base: str, reference: dict) -> dict:
    specs = _kill_specs(trial)
    out = os.path.join(base, f"chain-{trial}")
    args = TINY + CHAIN_FLAGS + [f"--output_dir={out}"]
    results, lacks = {}, set()
    for name in KILLS:
        spec, what = specs[name]
        result = results[name] = {"spec": spec, "what": what, "problems": [], "notes": []}
        proc = train(args, kill=spec)
        if proc.returncode != -9:
            result["problems"].append(f"the run did not reach the kill point (rc {proc.returncode}): "
                                      f"{proc.stderr[-2000:]}")
            continue
        found = check_run_dir(out, reference)
        result["problems"] += found["problems"]
        result["notes"] += found["notes"]
        if found["history_lacks"] - lacks:
            result["problems"].append(f"history.json lacks epochs {sorted(found['history_lacks'] - lacks)} that "
                                      "the newest checkpoint has done: a resumed run will never list them")
        lacks |= found["history_lacks"]
    final = results["final"] = {"spec": None, "what": "the final rerun", "problems": [], "notes": []}
    proc = train(args)
    if proc.returncode != 0:
        final["problems"].append(f"the final rerun failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
        return results
    found = check_run_dir(out, reference)
    final["problems"] += found["problems"]
    final["notes"] += found["notes"]
    history = [h["epoch"] for h in json.load(open(os.path.join(out, "history.json")))]
    if history != [1, 2, 3]:
        final["problems"].append(f"history epochs are {history}, not [1, 2, 3]")
    latest = tf.train.latest_checkpoint(os.path.join(out, "checkpoints"))
    if not latest or not latest.endswith("ckpt-3"):
        final["problems"].append(f"the latest checkpoint is {latest}, not ckpt-3")
    else:
        diff = close(_checkpoint_state(latest), reference["states"][3])
        if diff:
            final["problems"].append(f"final weights differ from the uninterrupted run's: {diff}")
    if not os.path.exists(os.path.join(out, "results.json")):
        final["problems"].append("no results.json")
    _, versions, temps = check_export_dir(os.path.join(out, "export"))
    if versions != ["1"]:
        final["problems"].append(f"export versions are {versions}, expected ['1']")
    final["export_temps_left"] = temps
    return results


@pytest.fixture(scope="module")
def kill_chain(reference, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("kills"))
    return [_run_chain(trial, base, reference) for trial in range(TRIALS)]


def _assert_clean(chains, name):
    for trial, results in enumerate(chains):
        result = results[name]
        assert not result["problems"], (
            f"SIGKILL {result['what']} (FFSD_TEST_KILL={result['spec']}, FFSD_FAULT_SEED={SEED}, trial {trial}):"
            "\n  " + "\n  ".join(result["problems"]))


# ------------------------------------------------------------------------------------ 1. kill anywhere
@pytest.mark.parametrize("name", KILLS)
def test_sigkill_leaves_only_whole_checkpoints_versions_and_history(kill_chain, name):
    _assert_clean(kill_chain, name)


def test_rerun_after_every_kill_matches_the_uninterrupted_run(kill_chain):
    _assert_clean(kill_chain, "final")
    for results in kill_chain:
        # A kill mid-export leaves <export_dir>/.tmp-1-<pid>@<host>-*/ (TF Serving ignores it: not a
        # numeric version); the next export removes it, its process being gone.
        assert results["final"]["export_temps_left"] == [], results["final"]


# ------------------------------------------------------------------------------------ 2. corrupt checkpoints
def _damaged_copy(reference, tmp_path, name="run"):
    out = str(tmp_path / name)
    shutil.copytree(reference["dir"], out)
    for f in ("results.json", "results.md"):
        os.unlink(os.path.join(out, f))
    return out


def _write_state(out, latest, paths):
    text = f'model_checkpoint_path: "{latest}"\n' + "".join(f'all_model_checkpoint_paths: "{p}"\n' for p in paths)
    with open(os.path.join(out, "checkpoints", "checkpoint"), "w") as f:
        f.write(text)


def _garble(path):
    data = bytearray(open(path, "rb").read())
    data[len(data) // 4: len(data) // 2] = os.urandom(len(data) // 2 - len(data) // 4)
    with open(path, "wb") as f:
        f.write(data)


def _assert_resumed_to_reference(proc, out, reference, unreadable, resumed_from):
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"checkpoint {os.path.join(out, 'checkpoints', unreadable)} is unreadable" in proc.stderr, proc.stderr
    assert f"Resuming from {os.path.join(out, 'checkpoints', resumed_from)} " in proc.stdout, proc.stdout[-2000:]
    assert [h["epoch"] for h in json.load(open(os.path.join(out, "history.json")))] == [1, 2, 3]
    latest = tf.train.latest_checkpoint(os.path.join(out, "checkpoints"))
    assert latest.endswith("ckpt-3")
    assert close(_checkpoint_state(latest), reference["states"][3]) is None


def test_corrupt_index_of_the_latest_checkpoint_falls_back_to_the_previous_one(reference, tmp_path):
    out = _damaged_copy(reference, tmp_path)
    _garble(os.path.join(out, "checkpoints", "ckpt-3.index"))
    _write_state(out, "ckpt-3", ["ckpt-1", "ckpt-2", "ckpt-3"])
    proc = train(TINY + [f"--output_dir={out}"])
    _assert_resumed_to_reference(proc, out, reference, "ckpt-3", "ckpt-2")


def test_state_file_pointing_at_a_missing_checkpoint_falls_back_to_the_previous_one(reference, tmp_path):
    """``checkpoint`` names ckpt-9 (never written) as the latest, ckpt-3 is gone: warn, resume from
    ckpt-2, retrain epoch 3."""
    out = _damaged_copy(reference, tmp_path)
    for f in os.listdir(os.path.join(out, "checkpoints")):
        if f.startswith("ckpt-3."):
            os.unlink(os.path.join(out, "checkpoints", f))
    _write_state(out, "ckpt-9", ["ckpt-1", "ckpt-2", "ckpt-9"])
    proc = train(TINY + [f"--output_dir={out}"])
    _assert_resumed_to_reference(proc, out, reference, "ckpt-9", "ckpt-2")


@pytest.mark.parametrize("damage", ["every-index-garbled", "only-a-missing-prefix-listed"])
def test_no_readable_checkpoint_fails_with_one_line_and_touches_nothing(reference, tmp_path, damage):
    out = _damaged_copy(reference, tmp_path)
    ckpt_dir = os.path.join(out, "checkpoints")
    if damage == "every-index-garbled":
        for n in (1, 2, 3):
            _garble(os.path.join(ckpt_dir, f"ckpt-{n}.index"))
    else:  # and no ckpt-N.index on disk either (those would be found: rundir.find_checkpoints)
        for n in (1, 2, 3):
            os.unlink(os.path.join(ckpt_dir, f"ckpt-{n}.index"))
        _write_state(out, "ckpt-9", ["ckpt-9"])
    before = {f: open(os.path.join(ckpt_dir, f), "rb").read() for f in os.listdir(ckpt_dir)}
    proc = train(TINY + [f"--output_dir={out}"])
    one_error_line(proc, "no readable checkpoint", allow_warnings=True)
    # Not trained over: the checkpoints (readable or not) are left for the user to inspect.
    assert {f: open(os.path.join(ckpt_dir, f), "rb").read() for f in os.listdir(ckpt_dir)} == before
    assert not os.path.exists(os.path.join(out, "results.json"))


# ------------------------------------------------------------------------------------ 3. flagfile typos
@pytest.mark.parametrize(
    "line,needle",
    [("--lamda_fusion=10", "lamda_fusion"), ("--epochs=ten", "--epochs=ten")],
    ids=["unknown-flag", "bad-value"],
)
def test_flagfile_typos_exit_2_with_one_line_and_create_nothing(tmp_path, line, needle):
    flagfile = tmp_path / "run.flags"
    if line is not None:
        flagfile.write_text("\n".join(TINY + [line]) + "\n")
    out = tmp_path / "out"
    proc = train([f"--flagfile={flagfile}", f"--output_dir={out}"], timeout=120)
    text = one_error_line(proc, needle)
    if line == "--lamda_fusion=10":
        assert "lambda_fusion" in text  # absl's suggestion
    assert not out.exists()


# ------------------------------------------------------------------------------------ 4. data faults
def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(">u1").tobytes()


def _fashion_folder(folder, truncate=None):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (40, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(40) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(20) % 10).astype(np.uint8),
    }
    folder.mkdir()
    for name, array in arrays.items():
        data = _idx(array)
        if name == truncate:
            data = data[: len(data) - 100]
        (folder / name).write_bytes(data)


def _cifar_npz(path, **override):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8),
        "y_train": (np.arange(100) % 10).astype(np.int64),
        "x_test": rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8),
        "y_test": (np.arange(30) % 10).astype(np.int64),
        **override,
    }
    np.savez(path, **arrays)


DATA_FAULTS = {
    "fashion-truncated-idx": ("fashion_mnist", "truncated"),
    "cifar10-label-10": ("cifar10", "labels span [0, 10] but must lie in [0, 10)"),
    "cifar10-test-images-28x28": ("cifar10", "train images are (32, 32, 3) but test images are (28, 28, 3)"),
}


@pytest.mark.parametrize("fault", list(DATA_FAULTS))
def test_data_faults_exit_2_with_one_line_before_training(tmp_path, fault):
    dataset, needle = DATA_FAULTS[fault]
    rng = np.random.default_rng(1)
    data = tmp_path / "data"
    if fault == "fashion-truncated-idx":
        _fashion_folder(data, truncate="train-images-idx3-ubyte")
        needle_file = "train-images-idx3-ubyte"
    else:
        data.mkdir()
        override = {
            "cifar10-label-10": dict(y_train=np.append(np.arange(99) % 10, 10)),
            "cifar10-test-images-28x28": dict(x_test=rng.integers(0, 256, (30, 28, 28, 3), dtype=np.uint8)),
        }[fault]
        _cifar_npz(data / "cifar10.npz", **override)
        needle_file = "cifar10.npz"
    out = tmp_path / "out"
    proc = train([f"--dataset={dataset}", f"--data_dir={data}", "--model=resnet8", "--epochs=1", "--milestones=",
                  f"--output_dir={out}"], timeout=120)
    text = one_error_line(proc, needle)
    assert needle_file in text  # names the file
    assert not out.exists()  # before training: nothing written


# ------------------------------------------------------------------------------------ 5. export faults
def _edit_config(out, fault):
    path = os.path.join(out, "config.json")
    config = json.load(open(path))
    if fault == "num_students=3":
        config["model"]["num_students"] = 3
    elif fault == "num_students=1":
        config["model"]["num_students"] = 1
    elif fault == "misspelt-key":
        config["model"]["num_studnets"] = config["model"].pop("num_students")
    if fault == "truncated-json":
        text = json.dumps(config)[:60]
    else:
        text = json.dumps(config)
    with open(path, "w") as f:
        f.write(text)


EXPORT_FAULTS = {
    "num_students=3": "does not match",
    "truncated-json": "config.json",
    "misspelt-key": "config.json",
}


@pytest.mark.parametrize("fault", list(EXPORT_FAULTS))
def test_export_of_a_run_with_another_or_damaged_config_exits_2_and_writes_nothing(reference, tmp_path, fault):
    out = str(tmp_path / "run")
    shutil.copytree(reference["dir"], out)
    _edit_config(out, fault)
    before = sorted(os.listdir(out))
    export_dir = tmp_path / "exports"
    proc = export_cli(out, f"--export_dir={export_dir}", "--formats=savedmodel", "--latency_repeats=1")
    one_error_line(proc, EXPORT_FAULTS[fault])
    assert not export_dir.exists() and sorted(os.listdir(out)) == before  # nothing written, default dir neither


def test_resume_with_a_damaged_config_exits_2_with_one_line(reference, tmp_path):
    out = _damaged_copy(reference, tmp_path)
    _edit_config(out, "truncated-json")
    proc = train(TINY + [f"--output_dir={out}"])
    one_error_line(proc, "config.json")
    assert not os.path.exists(os.path.join(out, "results.json"))
