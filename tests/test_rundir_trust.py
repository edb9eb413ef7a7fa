"""Run directories as untrusted input (issue 17): one test per numbered case of the issue.

Every file in a run directory may come from a colleague, a shared drive or a damaged disk:
paths read from it stay inside it (symlinks included), damage is one ``error:`` line naming the
file (exit 2), checkpoints are found and fallen back from the same way by run, export,
visualize and report, a resume with flags that change the result is refused, and a copied run's
``flags.txt`` replays into the copy. CLI runs use a tiny synthetic cohort; checks that need no
new process call the Python entry points.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SYNTHETIC_8PX, child_env
from tests.test_faults import _write_state, export_cli, one_error_line, train

TINY = [*SYNTHETIC_8PX, "--epochs=3", "--milestones=2", "--verbose=quiet"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A finished three-epoch TINY run (ckpt-1..3); tests copy it."""
    out = str(tmp_path_factory.mktemp("base") / "run")
    proc = train(TINY + [f"--output_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _copy(base_run, tmp_path, name="run", finished=False):
    out = str(tmp_path / name)
    shutil.copytree(base_run, out, symlinks=True)
    if not finished:
        for f in ("results.json", "results.md"):
            os.unlink(os.path.join(out, f))
    return out


def _snapshot(folder):
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(folder) for f in files}


# ------------------------------------------------------------------------------------ case 1
@pytest.mark.parametrize("how", ["dotdot-path", "symlinked-folder"])
def test_case1_state_file_listing_files_outside_the_run_deletes_nothing(base_run, tmp_path, how):
    """TF's CheckpointManager deletes what ``checkpoints/checkpoint`` lists: entries that resolve
    outside ``checkpoints/`` stop the run (one line, exit 2) before any manager exists."""
    out = _copy(base_run, tmp_path)
    ckpt_dir = os.path.join(out, "checkpoints")
    for n in (2, 3):
        for f in os.listdir(ckpt_dir):
            if f.startswith(f"ckpt-{n}."):
                os.unlink(os.path.join(ckpt_dir, f))
    victim = tmp_path / "VICTIM"
    victim.mkdir()
    (victim / "precious.index").write_bytes(b"index")
    (victim / "precious.data-00000-of-00001").write_bytes(b"data")
    if how == "dotdot-path":
        listed = "../../VICTIM/precious"
    else:
        os.symlink(str(victim), os.path.join(ckpt_dir, "link"))
        listed = "link/precious"
    _write_state(out, "ckpt-1", [listed, "ckpt-1"])
    proc = train(TINY + [f"--output_dir={out}"])
    one_error_line(proc, "outside")
    assert sorted(os.listdir(victim)) == ["precious.data-00000-of-00001", "precious.index"]
    assert (victim / "precious.index").read_bytes() == b"index"
    assert os.path.exists(os.path.join(ckpt_dir, "ckpt-1.index"))


def test_case1_checkpoints_folder_symlinked_outside_the_run_is_refused(tmp_path):
    """A ``checkpoints`` symlink to another folder would let TF's sweep delete there: refused."""
    from ffsd_tf import rundir

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "ckpt-1.index").write_bytes(b"x")
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(str(elsewhere), str(run / "checkpoints"))
    with pytest.raises(rundir.RunDirError, match="resolves outside"):
        rundir.find_checkpoints(str(run))
    assert (elsewhere / "ckpt-1.index").exists()


# ------------------------------------------------------------------------------------ case 2
def test_case2_export_visualize_and_report_fall_back_from_a_damaged_latest_checkpoint(base_run, tmp_path):
    """A truncated ckpt-3 data file (export: IndexError traceback before) and a deleted ckpt-3
    index ("no checkpoint ... train first" before) fall back to ckpt-2 with a warning line."""
    from ffsd_tf import rundir
    from ffsd_tf.report import run_cosines
    from ffsd_tf.visualize import visualize_run

    out = _copy(base_run, tmp_path, finished=True)
    data = os.path.join(out, "checkpoints", "ckpt-3.data-00000-of-00001")
    os.truncate(data, os.path.getsize(data) // 2)
    warnings = []
    _, _, ckpt = rundir.restore_model(out, warn=warnings.append)
    assert ckpt.endswith("ckpt-2") and len(warnings) == 1 and "ckpt-3 is unreadable" in warnings[0]
    shown = visualize_run(out, images=2)
    assert shown["checkpoint"].endswith("ckpt-2")
    assert run_cosines(out) is not None  # report --cosine restores through the same path

    os.unlink(os.path.join(out, "checkpoints", "ckpt-3.index"))
    warnings = []
    _, _, ckpt = rundir.restore_model(out, warn=warnings.append)
    assert ckpt.endswith("ckpt-2") and "ckpt-3" in warnings[0]

    export_dir = tmp_path / "exports"
    os.truncate(data, 0)  # listed, index gone: still skipped
    proc = export_cli(out, f"--export_dir={export_dir}", "--formats=savedmodel", "--latency_repeats=1",
                      "--max_eval=8", "--max_representative=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "warning: checkpoint" in proc.stderr and "ckpt-3" in proc.stderr
    report = json.load(open(export_dir / "1" / "report.json"))
    assert report["source"].endswith("ckpt-2")


# ------------------------------------------------------------------------------------ case 3
def test_case3_damaged_run_files_are_one_error_line_naming_the_file(base_run, tmp_path):
    """A wrongly typed setting in config.json (export, report), random bytes / ``--seed=abc`` in the
    flags.txt of a run whose config.json predates its settings, wrong JSON shapes in config.json and
    history.json: one-line errors naming the file, never a traceback. A current run never reads
    its flags.txt back (it is for replay): damage there changes nothing."""
    from ffsd_tf import export, report, rundir

    out = _copy(base_run, tmp_path, finished=True)
    config_path = os.path.join(out, "config.json")
    good_config = open(config_path).read()
    flags_path = os.path.join(out, "flags.txt")
    good_flags = open(flags_path, "rb").read()
    with open(flags_path, "wb") as f:
        f.write(bytes(range(256)) * 4)
    assert report.load_run(out)["seed"] == 0  # from config.json
    saved = json.loads(good_config)
    saved["runtime"]["seed"] = "abc"
    with open(config_path, "w") as f:
        json.dump(saved, f)
    with pytest.raises(rundir.RunDirError, match="config.json.*seed='abc' is not an integer"):
        export.export_run(out, export_dir=str(tmp_path / "e1"), formats=["savedmodel"], latency_repeats=1)
    with pytest.raises(report.ReportError, match="config.json.*seed"):
        report.build_report([out])
    legacy = {"model": saved["model"], "dataset": saved["dataset"]}  # written before config.json held settings
    with open(config_path, "w") as f:
        json.dump(legacy, f)
    with pytest.raises(report.ReportError, match="flags.txt"):
        report.load_run(out)
    with open(flags_path, "wb") as f:
        f.write(good_flags.replace(b"--seed=0", b"--seed=abc"))
    with pytest.raises(rundir.RunDirError, match="flags.txt.*--seed=abc"):  # rundir.load_run_data rebuilds the data
        export.export_run(out, export_dir=str(tmp_path / "e2"), formats=["savedmodel"], latency_repeats=1)
    assert not (tmp_path / "e1").exists() and not (tmp_path / "e2").exists()
    with open(flags_path, "wb") as f:
        f.write(good_flags)

    for shape in ([1, 2], {"model": {}, "dataset": []}, "text"):
        with open(config_path, "w") as f:
            json.dump(shape, f)
        with pytest.raises(rundir.RunDirError, match="config.json"):
            rundir.restore_model(out)
    with open(config_path, "wb") as f:
        f.write(b"\xff\xfe{")
    with pytest.raises(rundir.RunDirError, match="config.json"):
        rundir.load_config(out)
    with open(config_path, "w") as f:
        f.write(good_config)

    history_path = os.path.join(out, "history.json")
    for shape in ({"epoch": 1}, [{"epoch": "1"}], [1, 2]):
        with open(history_path, "w") as f:
            json.dump(shape, f)
        with pytest.raises(rundir.RunDirError, match="history.json"):
            rundir.read_history(history_path)


def test_case3_resume_with_history_of_the_wrong_shape_is_one_line(base_run, tmp_path):
    out = _copy(base_run, tmp_path)
    with open(os.path.join(out, "history.json"), "w") as f:
        json.dump({"epoch": 1}, f)
    proc = train(TINY + [f"--output_dir={out}"])
    one_error_line(proc, "history.json")  # a TypeError traceback before


def test_case3_replaying_a_flags_txt_of_random_bytes_is_one_line(tmp_path):
    flagfile = tmp_path / "flags.txt"
    flagfile.write_bytes(bytes(range(128, 256)) * 3)
    proc = train([f"--flagfile={flagfile}", f"--output_dir={tmp_path / 'out'}"], timeout=120)
    one_error_line(proc, f"{flagfile}")  # a UnicodeDecodeError traceback from absl before
    assert not (tmp_path / "out").exists()


# A disk that fills up while epoch 2 is saved: TF's own save raises, as it does on ENOSPC.
DISK_FULL = r"""
from ffsd_tf.quiet import import_tensorflow_quietly
tf = import_tensorflow_quietly()
from absl import app
from tensorflow.python.checkpoint import checkpoint_management as cm
from ffsd_tf import run

real_save = cm.CheckpointManager.save
def save(self, checkpoint_number=None, **kwargs):
    if checkpoint_number == 2:
        raise tf.errors.ResourceExhaustedError(None, None, "ckpt-2_temp; No space left on device")
    return real_save(self, checkpoint_number=checkpoint_number, **kwargs)
cm.CheckpointManager.save = save
app.run(run.main, flags_parser=run.flags_parser())
"""


def test_case3_disk_full_during_a_checkpoint_is_one_line_and_keeps_the_last_good_one(tmp_path):
    import tensorflow as tf

    out = str(tmp_path / "run")
    proc = subprocess.run([sys.executable, "-c", DISK_FULL, *TINY, f"--output_dir={out}"], cwd=ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=300)
    line = one_error_line(proc, "epoch 2 checkpoint", code=4)
    assert "No space left on device" in line and "ckpt-1" in line
    assert tf.train.latest_checkpoint(os.path.join(out, "checkpoints")).endswith("ckpt-1")
    tf.train.load_checkpoint(os.path.join(out, "checkpoints", "ckpt-1"))


# ------------------------------------------------------------------------------------ case 4
def test_case4_without_the_state_file_a_rerun_resumes_from_the_checkpoints_on_disk(base_run, tmp_path):
    """``checkpoints/checkpoint`` deleted: the rerun scans ckpt-N files and resumes from ckpt-3
    (it retrained from epoch 1 over them before)."""
    out = _copy(base_run, tmp_path)
    os.unlink(os.path.join(out, "checkpoints", "checkpoint"))
    before = open(os.path.join(out, "checkpoints", "ckpt-3.index"), "rb").read()
    proc = train(TINY + [f"--output_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Resuming from {os.path.join(out, 'checkpoints', 'ckpt-3')} (epoch 3 done)" in proc.stdout
    assert open(os.path.join(out, "checkpoints", "ckpt-3.index"), "rb").read() == before
    assert [h["epoch"] for h in json.load(open(os.path.join(out, "history.json")))] == [1, 2, 3]


@pytest.mark.parametrize("relative", [True, False])
def test_case4_a_resume_leaves_a_state_file_the_next_resume_accepts(base_run, tmp_path, monkeypatch, relative):
    """Resuming rewrites ``checkpoints/checkpoint`` with bare names. Given a relative --output_dir,
    TF wrote ``../../../ckpt-3`` there (names taken as relative to the working directory), so the
    second resume of a run refused it as "outside" (found in the budget study)."""
    from ffsd_tf import rundir

    out = _copy(base_run, tmp_path)
    monkeypatch.chdir(tmp_path)
    run_dir = os.path.relpath(out) if relative else out
    latest = os.path.join(run_dir, "checkpoints", "ckpt-3")
    rundir.write_checkpoint_state(run_dir, latest)
    text = open(os.path.join(out, "checkpoints", "checkpoint")).read()
    assert 'model_checkpoint_path: "ckpt-3"' in text and ".." not in text, text
    listed = rundir.listed_checkpoints(run_dir)  # what the next resume reads: no RunDirError
    assert [os.path.basename(p) for p in listed] == ["ckpt-1", "ckpt-2", "ckpt-3"]


def test_case4_resume_with_a_flag_that_changes_the_result_is_refused(base_run, tmp_path):
    out = _copy(base_run, tmp_path)
    before = _snapshot(out)
    proc = train(TINY + [f"--output_dir={out}", "--seed=1", "--lr=0.05", "--batch_size=32", "--eval_every=2"])
    line = one_error_line(proc, "change the result")
    assert "--seed=1" in line and "--lr=0.05" in line and "--batch_size=32" in line and "--force_resume" in line
    assert "eval_every" not in line  # does not change the result
    assert _snapshot(out) == before  # flags.txt not rewritten: report still sees the run's seed


def test_case4_fewer_epochs_than_trained_is_refused(base_run, tmp_path):
    """--epochs may grow, not shrink below what is trained (results.json would describe 2 epochs of a
    3-epoch history). --force_resume lets the other milestones through, with a warning line."""
    out = _copy(base_run, tmp_path)
    proc = train(TINY + [f"--output_dir={out}", "--epochs=2", "--milestones=", "--force_resume"])
    assert proc.stderr.startswith("warning: --force_resume: --milestones="), proc.stderr
    proc.stderr = proc.stderr.split("\n", 1)[1]
    one_error_line(proc, "has trained 3 epochs, more than --epochs=2")
    assert not os.path.exists(os.path.join(out, "results.json"))


def test_case4_runs_without_a_flags_section_compare_their_flags_txt(base_run, tmp_path):
    """Runs written before config.json held the settings: those with a "flags" section (its
    ``--name=value`` lines) compare it, older ones their flags.txt."""
    from ffsd_tf import rundir
    from ffsd_tf.config import NEUTRAL, flag_text

    out = _copy(base_run, tmp_path)
    config_path = os.path.join(out, "config.json")
    config, meta = rundir.read_config(out)
    saved = json.load(open(config_path))
    flags = {k: flag_text(k, v) for k, v in config.settings().items() if k not in NEUTRAL}  # as they were stored

    def result_defining(c):
        return c.cohort, {k: v for k, v in c.settings().items() if k not in NEUTRAL}

    for legacy, source in (({"flags": flags}, "config.json"), ({}, "flags.txt")):
        with open(config_path, "w") as f:
            json.dump({"model": saved["model"], "dataset": saved["dataset"], **legacy}, f)
        upgraded, upgraded_meta = rundir.read_config(out)
        assert result_defining(upgraded) == result_defining(config) and upgraded_meta == meta
        rundir.check_compatible(out, config)
        with pytest.raises(rundir.RunDirError, match=rf"--seed=7 \(the run has --seed=0\).*{source}"):
            rundir.check_compatible(out, config.replace(seed=7))
        warned = []
        rundir.check_compatible(out, config.replace(seed=7), force=True, warn=warned.append)
        assert warned and "--seed=7" in warned[0]


# ------------------------------------------------------------------------------------ case 5
def test_case5_replaying_flags_txt_of_a_copied_run_writes_into_the_copy(base_run, tmp_path):
    original = _copy(base_run, tmp_path, "original")
    copy = str(tmp_path / "copy")
    shutil.copytree(original, copy, symlinks=True)
    before = _snapshot(original)
    proc = train([f"--flagfile={os.path.join(copy, 'flags.txt')}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Resuming from {os.path.join(copy, 'checkpoints', 'ckpt-3')}" in proc.stdout, proc.stdout[-2000:]
    assert os.path.exists(os.path.join(copy, "results.json"))
    assert _snapshot(original) == before  # the run it was copied from is untouched


# ------------------------------------------------------------------------------------ case 6
@pytest.mark.parametrize("flag", ["--lr=nan", "--temperature=inf", "--lambda_kl=inf", "--weight_decay=inf"])
def test_case6_non_finite_float_flags_are_refused_before_anything_is_written(tmp_path, flag):
    out = tmp_path / "run"
    proc = train(TINY + [f"--output_dir={out}", flag], timeout=120)
    one_error_line(proc, f"--{flag[2:].split('=')[0]} must be a finite number")
    assert not out.exists()


def test_case6_idx_header_whose_size_overflows_is_one_data_error(tmp_path):
    """Four dimensions of 65536 wrap an int64 product to 0: the empty payload 'matched' and the
    reshape raised a ValueError traceback."""
    from ffsd_tf.data import DataError
    from ffsd_tf.data.idx import read_idx

    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 0x08, 4]) + (65536).to_bytes(4, "big") * 4)
    with pytest.raises(DataError, match="train-images-idx3-ubyte is truncated"):
        read_idx(path)


def test_case6_text_file_given_as_npz_is_named_without_pickle_jargon(tmp_path):
    from ffsd_tf.data import DataError
    from ffsd_tf.data.sources import load_npz

    path = tmp_path / "cifar10.npz"
    path.write_text("x_train,y_train\n1,2\n")
    with pytest.raises(DataError) as info:
        load_npz(str(path), "cifar10", 10, [0.5] * 3, [0.25] * 3, [str(i) for i in range(10)])
    assert "cifar10.npz is not an .npz file" in str(info.value) and "pickle" not in str(info.value)


def test_case6_savedmodel_refuses_batches_over_its_documented_maximum(tmp_path):
    """The exported signatures take at most ``serving.MAX_BATCH`` images (80k images took 2.1 GB before)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from ffsd_tf.export import serving

    inputs = keras.Input((8, 8, 3))
    leader = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(inputs)))
    names = tmp_path / "names.txt"
    serving.write_class_names(str(names), ["a", "b", "c"])
    module = serving.LeaderServing(leader, mean=[0.5] * 3, std=[0.25] * 3, image_shape=(8, 8, 3),
                                   class_names_file=str(names), num_classes=3, top_k=2)
    serving.save(module, str(tmp_path / "sm"))
    _, fn = serving.load_signature(str(tmp_path / "sm"))
    ok = fn(images=tf.zeros([serving.MAX_BATCH, 8, 8, 3]))["probabilities"]
    assert ok.shape == (serving.MAX_BATCH, 3) and np.allclose(ok.numpy().sum(-1), 1, atol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="maximum of 4096; split the request"):
        fn(images=tf.zeros([serving.MAX_BATCH + 1, 8, 8, 3]))


def test_case6_rerunning_a_finished_export_publishes_no_duplicate(base_run, tmp_path):
    """A version of the run's last checkpoint exists: rerunning ``--export`` says so and publishes
    no ``export/2`` (it did before); ``--reexport`` is the way to ask for one."""
    out = _copy(base_run, tmp_path, finished=True)
    proc = export_cli(out, "--formats=savedmodel", "--latency_repeats=1", "--max_eval=8", "--max_representative=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = train(TINY + [f"--output_dir={out}", "--export"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "is up to date" in proc.stdout and "--reexport" in proc.stdout
    assert sorted(os.listdir(os.path.join(out, "export"))) == ["1"]


# ------------------------------------------------------------------------------------ fuzzing
RUN_FILES = ["flags.txt", "config.json", "history.json", "results.json", "checkpoints/checkpoint"]


def _json_values():
    from hypothesis import strategies as st

    scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False), st.text(max_size=5))
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["epoch", "model", "dataset", "flags", "accuracy", "name", "x"]), inner,
                        max_size=4)), max_leaves=8)


def _contents():
    from hypothesis import strategies as st

    return st.one_of(
        st.binary(max_size=300),
        _json_values().map(lambda v: json.dumps(v).encode()),
        st.sampled_from([b"", b"\xff\xfe\x00", b'model_checkpoint_path: "/etc/passwd"\n', b"--seed=abc\n--image_size=x\n"]),
    )


def test_fuzzed_run_directory_files_give_results_or_one_line_errors(base_run, tmp_path_factory):
    """Random bytes and JSON of any shape in any run file: run's resume checks, export, report and
    visualize either work or raise their one-line error naming the file; never another exception."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from ffsd_tf import export, report, rundir
    from ffsd_tf.data import DataError
    from ffsd_tf.visualize import VisualizeError, visualize_run

    expected = (rundir.RunDirError, export.ExportError, report.ReportError, VisualizeError, DataError)
    scratch = tmp_path_factory.mktemp("fuzz")
    counter = iter(range(10**6))

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(name=st.sampled_from(RUN_FILES), content=_contents())
    def check(name, content):
        out = str(scratch / f"run{next(counter)}")
        shutil.copytree(base_run, out, symlinks=True)
        with open(os.path.join(out, name), "wb") as f:
            f.write(content)
        base = os.path.basename(name)

        def one_line(fn, *args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except expected as e:
                message = str(e)
                assert "\n" not in message.strip() and message.strip(), (name, content, message)
                assert base in message or name == "checkpoints/checkpoint" or "checkpoint" in message, (name, message)
                return None

        warn = []
        config = one_line(rundir.load_config, out)
        if config is not None:
            one_line(rundir.check_compatible, out, rundir.read_config(base_run)[0])
        one_line(rundir.read_history, os.path.join(out, "history.json"))
        assert one_line(rundir.find_checkpoints, out, warn=warn.append) != []
        one_line(report.load_run, out)
        if name != "results.json":  # results.json is read by report only
            restored = one_line(rundir.restore_model, out, warn=warn.append)
            if restored is not None:
                one_line(rundir.load_run_data, out)
                if name in ("history.json", "flags.txt"):
                    one_line(visualize_run, out, images=1)
        assert all(w.startswith("warning: ") and "\n" not in w for w in warn)

    check()
