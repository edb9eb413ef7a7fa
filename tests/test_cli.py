"""`python -m ffsd_tf.run` end to end: outputs, resume after SIGKILL, bad flags."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import ROOT, SYNTHETIC, child_env, run_cli

SMALL = [*SYNTHETIC, "--milestones=2", "--lr=0.05", "--lambda_diversity_schedule=exp_warmup:2", "--verbose=line"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run") / "full")
    proc = run_cli(SMALL + ["--epochs=3", f"--output_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_run_writes_flags_tensorboard_checkpoint_results(finished_run):
    out, proc = finished_run
    # Flags: a replayable flagfile holding this run's values.
    flags_text = open(os.path.join(out, "flags.txt")).read()
    assert "--model=resnet8" in flags_text and "--epochs=3" in flags_text and "--lambda_fusion=10.0" in flags_text
    # TensorBoard: per-model scalar names in the event files.
    tags = set()
    for sub in ("train", "validation"):
        d = os.path.join(out, "tensorboard", sub)
        files = [os.path.join(d, f) for f in os.listdir(d) if "tfevents" in f]
        assert files, sub
        for f in files:
            for event in tf.compat.v1.train.summary_iterator(f):
                tags |= {f"{sub}:{v.tag}" for v in event.summary.value}
    for tag in ["train:leader/acc", "train:student1/acc", "train:fusion/acc", "train:student2/diversity",
                "validation:leader/acc", "validation:ens_any/acc", "train:weights/diversity", "train:lr/students"]:
        assert tag in tags, (tag, sorted(tags))
    # Checkpoints: one per epoch (kept), the latest at epoch 3.
    assert tf.train.latest_checkpoint(os.path.join(out, "checkpoints")).endswith("ckpt-3")
    # Results: JSON and table agree with the history.
    results = json.load(open(os.path.join(out, "results.json")))
    history = json.load(open(os.path.join(out, "history.json")))
    assert [h["epoch"] for h in history] == [1, 2, 3]
    leader = results["accuracy"]["leader"]
    assert leader["final"] == pytest.approx(history[-1]["val_leader/acc"])
    assert leader["best"] == pytest.approx(max(h["val_leader/acc"] for h in history))
    assert set(results["accuracy"]) >= {"student1", "student2", "fusion", "leader", "students_mean", "ensemble", "ens_any"}
    table = open(os.path.join(out, "results.md")).read()
    assert "| Leader |" in table and "| Ens (any student right) |" in table
    assert f"{100 * leader['final']:.2f}" in table
    assert "| Leader |" in proc.stdout  # printed at the end too
    # The leader learned the task (4 classes: chance is 25 %).
    assert leader["best"] > 0.5, results


def test_flagfile_replays_the_run(finished_run, tmp_path):
    out, _ = finished_run
    replay = str(tmp_path / "replay")
    proc = run_cli([f"--flagfile={out}/flags.txt", f"--output_dir={replay}", "--epochs=1", "--milestones="])
    assert proc.returncode == 0, proc.stderr[-2000:]
    a = json.load(open(os.path.join(out, "history.json")))[0]
    b = json.load(open(os.path.join(replay, "history.json")))[0]
    assert a["leader/ce"] == pytest.approx(b["leader/ce"], rel=1e-5)  # same seed, same first epoch


def _checkpoint_state(path):
    reader = tf.train.load_checkpoint(path)
    names = [n for n, _ in tf.train.list_variables(path) if not n.startswith("_CHECKPOINTABLE")]
    return {n: reader.get_tensor(n) for n in names}


def test_resume_after_sigkill_matches_uninterrupted_run(finished_run, tmp_path):
    full, _ = finished_run
    out = str(tmp_path / "killed")
    args = SMALL + ["--epochs=3", f"--output_dir={out}"]
    proc = subprocess.Popen([sys.executable, "-m", "ffsd_tf.run", *args], cwd=ROOT, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = os.path.join(out, "checkpoints", "ckpt-1.index")
    deadline = time.time() + 240
    while not os.path.exists(first) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert os.path.exists(first), "the run never wrote its first checkpoint"
    time.sleep(0.3)  # into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(out, "results.json"))
    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout
    history = json.load(open(os.path.join(out, "history.json")))
    assert [h["epoch"] for h in history] == [1, 2, 3]
    a = _checkpoint_state(tf.train.latest_checkpoint(os.path.join(full, "checkpoints")))
    b = _checkpoint_state(tf.train.latest_checkpoint(os.path.join(out, "checkpoints")))
    assert a.keys() == b.keys()
    iterations = [k for k in a if "iterations" in k]
    assert len(iterations) == 4  # students, leader, fusion, decoders
    for k in iterations:
        assert int(a[k]) == int(b[k]) == 3 * 8, k  # 3 epochs x 256/32 steps
    for k in a:
        if a[k].dtype.kind == "f":
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_resume_refuses_another_configuration(finished_run, tmp_path):
    out, _ = finished_run
    proc = run_cli(SMALL + ["--epochs=4", "--num_students=3", f"--output_dir={out}"])
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "another configuration" in lines[0] and "num_students" in lines[0], proc.stderr


@pytest.mark.parametrize(
    "flag,needle",
    [
        ("--model=resnet33", "--model=resnet33 is unknown"),
        ("--dataset=imagenet9", "dataset"),
        ("--num_students=0", "--num_students must be >= 1"),
        ("--lambda_fusion=-1", "--lambda_fusion must be >= 0"),
        ("--lr=-0.1", "--lr must be > 0"),
        ("--milestones=2,9", "beyond --epochs"),
        ("--milestones=2,1", "increasing"),
        ("--lambda_kl_schedule=warmup", "bad weight schedule"),
        ("--no_such_flag=1", "no_such_flag"),
        ("--diversity=cosine", "diversity"),
        ("--self_distillation=leader --noleader", "needs a leader"),
        ("--leader_kl_mask=teacher_correct --noleader", "--leader_kl_mask masks the leader's KL: it needs leader=True"),
        ("--leader_kl_mask=wrong_only", "--leader_kl_mask=wrong_only"),
    ],
)
def test_bad_flags_exit_nonzero_with_one_clear_line(tmp_path, flag, needle):
    out = tmp_path / "bad"
    proc = run_cli(SMALL + ["--epochs=3", f"--output_dir={out}", *flag.split()], timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists()  # nothing created


def test_missing_dataset_fails_fast(tmp_path):
    start = time.time()
    proc = run_cli(["--dataset=cifar100", f"--data_dir={tmp_path}", f"--output_dir={tmp_path / 'out'}"], timeout=120)
    assert proc.returncode != 0
    assert time.time() - start < 60  # import + check; tfds would retry the network for minutes
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cifar" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_non_finite_loss_stops_naming_the_term_and_keeps_the_last_good_checkpoint(tmp_path):
    out = str(tmp_path / "nan")
    ok = run_cli(SMALL + ["--epochs=1", "--milestones=", f"--output_dir={out}"])
    assert ok.returncode == 0, ok.stderr[-2000:]
    good = _checkpoint_state(os.path.join(out, "checkpoints", "ckpt-1"))
    # Another --lr changes the result: resuming with it needs --force_resume (a warning line).
    proc = run_cli(SMALL + ["--epochs=3", "--milestones=", "--lr=1e6", "--force_resume", f"--output_dir={out}"])
    assert proc.returncode == 3
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("warning: --force_resume: --lr=1000000.0"), proc.stderr
    lines = lines[1:]
    assert len(lines) == 1 and "non-finite value of student" in lines[0] and "(model student" in lines[0], proc.stderr
    latest = tf.train.latest_checkpoint(os.path.join(out, "checkpoints"))
    assert latest.endswith("ckpt-1")
    after = _checkpoint_state(latest)
    assert all(np.array_equal(good[k], after[k]) for k in good)
    assert [h["epoch"] for h in json.load(open(os.path.join(out, "history.json")))] == [1]


def test_unwritable_output_dir_is_reported_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    start = time.time()
    proc = run_cli(SMALL + ["--epochs=3", f"--output_dir={blocker}/run"])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not writable" in lines[0], proc.stderr
    assert time.time() - start < 60


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(finished_run, tmp_path):
    import shutil

    full, _ = finished_run
    out = str(tmp_path / "corrupt")
    shutil.copytree(full, out)
    for name in ("results.json", "results.md"):
        os.unlink(os.path.join(out, name))
    data = [f for f in os.listdir(os.path.join(out, "checkpoints")) if f.startswith("ckpt-3.data")][0]
    path = os.path.join(out, "checkpoints", data)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    proc = run_cli(SMALL + ["--epochs=3", f"--output_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ckpt-3 is unreadable" in proc.stderr and "Resuming from" in proc.stdout and "ckpt-2" in proc.stdout
    assert [h["epoch"] for h in json.load(open(os.path.join(out, "history.json")))] == [1, 2, 3]
    a = _checkpoint_state(os.path.join(full, "checkpoints", "ckpt-3"))
    b = _checkpoint_state(tf.train.latest_checkpoint(os.path.join(out, "checkpoints")))
    for k in a:
        if a[k].dtype.kind == "f":
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
