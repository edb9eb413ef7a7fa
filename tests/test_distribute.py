"""Scale features: MirroredStrategy == one device, MultiWorkerMirroredStrategy over two local worker
processes (the real CLI and the trainer), mixed precision, and the CLI's refusals.

Anything that needs its own TensorFlow runtime (logical devices, TF_CONFIG) runs in a subprocess
with a timeout, so a hung collective fails the test instead of hanging CI.
"""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import ROOT
from tests.conftest import TINY_COHORT as TINY

HELPER = os.path.join(ROOT, "tests", "multiworker_main.py")
SMOKE = [
    "--dataset=synthetic",
    "--synthetic_classes=4",
    "--synthetic_train=128",
    "--synthetic_test=64",
    "--image_size=16",
    "--model=resnet8",
    "--batch_size=32",
    "--milestones=",
    "--epochs=2",
    "--verbose=quiet",
]
# Networks (state-key prefixes) of each SGD role; SGD's first step is linear in the gradient.
SGD_ROLE_NETWORKS = {
    "students": ("student1/", "student2/"),
    "leader": ("leader/", "trans_fusion/"),
    "fusion": ("fusion/",),
}


def child_env(**extra):
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": path}
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def run_python(args, timeout, env=None):
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env or child_env(), capture_output=True, text=True, timeout=timeout
    )


def tail(text, n=2500):
    """The end of a child's stderr, led by its last exception line (tensor reprs can bury it)."""
    if not text:
        return "<empty>"
    errors = [line for line in text.splitlines() if re.match(r"^[A-Za-z_.]*(Error|Exception)\b.*:", line)]
    head = f"last exception: {errors[-1][:400]}\n" if errors else ""
    return head + text[-n:]


def free_ports(n):
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_config(ports, index):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


def run_cluster(argv, envs, timeout=240, watch=None, grace=15):
    """Runs one process per env (the workers of a cluster) to completion.

    A worker that fails leaves the others waiting in a collective: they get ``grace`` seconds, then
    are killed; every process is killed at ``timeout``. ``watch()`` runs about every 0.1 s meanwhile.
    Returns ``[(returncode, stdout, stderr, pid)]``.
    """
    procs, outputs, threads = [], [], []

    def drain(out, which, stream):  # in threads, so a chatty worker never blocks on a full pipe
        out[which] = stream.read()

    try:
        for env in envs:
            p = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            procs.append(p)
            outputs.append(["", ""])
            for which, stream in enumerate((p.stdout, p.stderr)):
                threads.append(threading.Thread(target=drain, args=(outputs[-1], which, stream), daemon=True))
                threads[-1].start()
        deadline, failed_at = time.monotonic() + timeout, None
        while any(p.poll() is None for p in procs):
            if watch is not None:
                watch()
            now = time.monotonic()
            if failed_at is None and any(p.poll() not in (None, 0) for p in procs):
                failed_at = now
            if now > deadline or (failed_at is not None and now > failed_at + grace):
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                    p.wait()
                for t in threads:
                    t.join(5)
                reason = f"timed out after {timeout}s" if failed_at is None else f"lost a worker, others hung {grace}s"
                states = "\n".join(f"worker{i}: rc={p.returncode}\n{tail(outputs[i][1])}" for i, p in enumerate(procs))
                pytest.fail(f"multi-worker run {reason}; killed.\n{states}")
            time.sleep(0.1)
        for t in threads:
            t.join(30)
        if watch is not None:
            watch()
        return [(p.returncode, out[0], out[1], p.pid) for p, out in zip(procs, outputs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# ----------------------------------------------------------------------------------------------
# 1. MirroredStrategy over two logical CPU devices == one device


@pytest.fixture(scope="module")
def mirrored_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mirrored")
    proc = run_python([HELPER, "mirrored", str(out)], timeout=240)
    assert proc.returncode == 0, tail(proc.stderr)
    load = lambda name: dict(np.load(out / f"{name}.npz"))  # noqa: E731
    meta = json.loads((out / "meta.json").read_text())
    return meta, load


def test_mirrored_two_devices_equals_one_device(mirrored_run):
    meta, load = mirrored_run
    assert meta["replicas"] == 2
    assert meta["bn_layers"] > 0 and meta["bn_synchronized"] == meta["bn_layers"], meta
    init = load("init")
    # Both runs started from the same state (the mirrored cohort was built from another seed).
    for key, value in load("mirrored_init").items():
        np.testing.assert_array_equal(value, init[key], err_msg=key)
    for step in (1, 2):
        single, mirror = load(f"single_{step}"), load(f"mirrored_{step}")
        assert single.keys() == mirror.keys()
        kinds = {"trainable": 0, "non_trainable": 0, "optimizer": 0}
        for key in single:
            np.testing.assert_allclose(mirror[key], single[key], rtol=1e-5, atol=1e-5, err_msg=f"step {step}: {key}")
            kinds["optimizer" if key.startswith("optimizer/") else key.split("/")[1]] += 1
        assert min(kinds.values()) > 0, kinds
        for key in single:
            if key.endswith("/iteration"):
                assert int(single[key]) == int(mirror[key]) == step, key
        assert meta[f"mirrored_loss_{step}"] == pytest.approx(meta[f"single_loss_{step}"], rel=1e-5)
    # The BN statistics did move (otherwise "match" would prove nothing about sync BN).
    moving = [k for k in init if k.endswith("moving_variance")]
    assert moving and any(not np.allclose(load("single_1")[k], init[k]) for k in moving)


def test_mirrored_update_is_not_doubled(mirrored_run):
    """Without the 1/num_replicas scaling the summed per-replica gradients give a 2x update."""
    _, load = mirrored_run
    init, single, mirror = load("init"), load("single_1"), load("mirrored_1")
    for role, prefixes in SGD_ROLE_NETWORKS.items():
        keys = [k for k in init if "/trainable/" in k and k.startswith(prefixes)]
        assert keys, role
        d_single = np.concatenate([(single[k] - init[k]).ravel() for k in keys])
        d_mirror = np.concatenate([(mirror[k] - init[k]).ravel() for k in keys])
        assert np.linalg.norm(d_single) > 1e-4, role
        ratio = float(d_mirror @ d_single / (d_single @ d_single))
        assert ratio == pytest.approx(1.0, abs=1e-3), f"{role}: mirrored update is {ratio:.4f}x the one-device update"
        assert np.linalg.norm(d_mirror - 2 * d_single) > 0.5 * np.linalg.norm(d_single), role


# ----------------------------------------------------------------------------------------------
# 2. MultiWorkerMirroredStrategy: two worker processes on loopback


def test_multi_worker_cli_only_chief_writes(tmp_path):
    """The real CLI on a two-worker cluster sharing one --output_dir (as on a shared filesystem)."""
    out = tmp_path / "run"
    scratch = [tmp_path / "tmp0", tmp_path / "tmp1"]  # each worker's TMPDIR
    for d in scratch:
        d.mkdir()
    ports = free_ports(2)
    seen = [set(), set()]  # ffsd-* entries each worker's TMPDIR held at some point
    scratch_ckpts = set()

    def watch():
        for i, d in enumerate(scratch):
            for name in os.listdir(d):
                if name.startswith("ffsd-"):
                    seen[i].add(name)
                    ckpt_dir = d / name / "checkpoints"
                    if ckpt_dir.is_dir():
                        scratch_ckpts.update(f for f in os.listdir(ckpt_dir) if f.endswith(".index"))

    argv = ["-m", "ffsd_tf.run", "--strategy=multi_worker", "--sync_batchnorm", "--steps_per_epoch=2",
            f"--output_dir={out}", *SMOKE]
    envs = [child_env(TF_CONFIG=tf_config(ports, i), TMPDIR=str(scratch[i])) for i in range(2)]
    results = run_cluster(argv, envs, timeout=240, watch=watch)
    for i, (rc, stdout, stderr, _) in enumerate(results):
        assert rc == 0, f"worker{i} exited {rc}:\n{tail(stderr)}"
    (_, chief_out, _, chief_pid), (_, worker_out, _, _) = results
    assert "Results" in chief_out and worker_out.strip() == "", (chief_out, worker_out)

    # The non-chief saved its checkpoints into a scratch directory of its own and removed it.
    assert not seen[0], f"the chief used a scratch directory: {seen[0]}"
    assert len(seen[1]) == 1 and next(iter(seen[1])).startswith("ffsd-worker1-"), seen[1]
    assert scratch_ckpts, "the non-chief's scratch directory never held a checkpoint"
    assert not [n for n in os.listdir(scratch[1]) if n.startswith("ffsd-")], "scratch directory left behind"

    # output_dir holds exactly one run: the chief's files, nothing else.
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    events = [f for f in files if f.startswith("tensorboard/")]
    assert sorted(f.split("/")[1] for f in events) == ["attention", "train", "validation"], events
    assert all(f".{chief_pid}." in f for f in events), (events, chief_pid)  # written by the chief process
    expected = {
        "config.json", "flags.txt", "history.json", "results.json", "results.md", "checkpoints/checkpoint",
        "checkpoints/ckpt-1.index", "checkpoints/ckpt-1.data-00000-of-00001",
        "checkpoints/ckpt-2.index", "checkpoints/ckpt-2.data-00000-of-00001",
    }
    assert set(files) - set(events) == expected, files
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [1, 2]

    # The chief's final checkpoint is complete and consistent with the run's config.
    from ffsd_tf import rundir

    state = tf.train.get_checkpoint_state(str(out / "checkpoints"))
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-1", "ckpt-2"]
    model, _, path = rundir.restore_model(str(out))
    assert path.endswith("ckpt-2") and int(model.epoch.numpy()) == 2
    assert model.config.sync_batchnorm
    images = tf.random.normal((2, 16, 16, 3), seed=1)
    assert np.all(np.isfinite(model.deployable_leader()(images).numpy()))


def test_multi_worker_workers_end_identical(tmp_path):
    """Each worker trains on its own data; the all-reduce must leave every worker with the same state."""
    ports = free_ports(2)
    envs = [child_env(TF_CONFIG=tf_config(ports, i)) for i in range(2)]
    results = run_cluster([HELPER, "worker", str(tmp_path)], envs, timeout=240)
    for i, (rc, _, stderr, _) in enumerate(results):
        assert rc == 0, f"worker{i} exited {rc}:\n{tail(stderr)}"
    metas = [json.loads((tmp_path / f"meta_{i}.json").read_text()) for i in range(2)]
    assert [m["replicas"] for m in metas] == [2, 2]
    assert metas[0]["data_sum"] != metas[1]["data_sum"]  # different shards, so sync is what matters
    w = [dict(np.load(tmp_path / f"weights_{i}.npz")) for i in range(2)]
    assert w[0].keys() == w[1].keys()
    finals = [k for k in w[0] if k.startswith("final/")]
    assert len(finals) > 100
    for k in finals:
        np.testing.assert_allclose(w[1][k], w[0][k], rtol=0, atol=1e-6, err_msg=k)
    # Training happened: weights, BN statistics and optimizer steps moved.
    for key in finals:
        if key.endswith("/iteration"):
            assert int(w[0][key]) == 3, key
    moved = [k for k in finals if not np.array_equal(w[0][k], w[0]["init/" + k[len("final/"):]])]
    assert any("/trainable/" in k for k in moved) and any("moving_mean" in k for k in moved)


# ----------------------------------------------------------------------------------------------
# 3. Mixed precision


@pytest.fixture
def float32_afterwards():
    """The test sets a global dtype policy; float32 is restored whatever happens."""
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def tiny_mixed_cohort(precision):
    from ffsd_tf import distribute
    from ffsd_tf.optimizers import TorchAdam, TorchSGD
    from ffsd_tf.trainer import FFSD, FFSDConfig

    distribute.set_precision(precision)
    keras.utils.set_random_seed(0)
    model = FFSD(FFSDConfig(**TINY))
    model.set_epoch(1)
    base = {
        "students": TorchSGD(0.01, momentum=0.9, weight_decay=1e-4, name="students_sgd"),
        "leader": TorchSGD(0.01, momentum=0.9, weight_decay=1e-4, name="leader_sgd"),
        "fusion": TorchSGD(0.01, momentum=0.9, weight_decay=1e-5, name="fusion_sgd"),
        "decoders": TorchAdam(1e-3, weight_decay=1e-4, name="decoders_adam"),
    }
    return model, base, distribute.wrap_for_precision(base, precision)


def data(n, seed=0, poison=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *TINY["input_shape"])).astype(np.float32)
    y = rng.integers(0, TINY["num_classes"], n).astype(np.int32)
    if poison:
        x[0, 0, 0, 0] = np.inf
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8)


def assert_mixed(model, compute_dtype):
    conv = model.leader.get_layer("stem_conv")
    assert conv.compute_dtype == compute_dtype and conv.kernel.dtype == "float32"
    leader = model.deployable_leader()
    assert leader.input.dtype == "float32"
    logits = leader(tf.random.normal((2, 16, 16, 3), seed=0))
    assert np.all(np.isfinite(np.asarray(tf.cast(logits, tf.float32))))
    assert logits.dtype == tf.float32, f"deployable_leader() under {compute_dtype} compute gives {logits.dtype} logits"


def leader_step(model, batch):
    """The leader's weight update of one training step on ``batch``, in float32."""
    before = [v.numpy().astype(np.float64) for v in model.leader.trainable_variables]
    history = model.fit(batch, epochs=1, shuffle=False, verbose=0).history
    after = [v.numpy().astype(np.float64) for v in model.leader.trainable_variables]
    return np.concatenate([(a - b).ravel() for a, b in zip(after, before)]), history


def test_mixed_float16_loss_scale(float32_afterwards):
    # Reference: the same cohort and step in float32.
    reference, _, opts32 = tiny_mixed_cohort("float32")
    reference.compile(opts32)
    d32, _ = leader_step(reference, data(8))

    model, base, opts = tiny_mixed_cohort("mixed_float16")
    assert all(isinstance(opts[r], keras.optimizers.LossScaleOptimizer) for r in base)
    assert all(opts[r].inner_optimizer is base[r] for r in base)
    for opt in opts.values():
        opt.dynamic_growth_steps = 2  # grow after 2 good steps instead of 2000
    model.compile(opts)
    scales = lambda: {r: float(o.dynamic_scale.numpy()) for r, o in model.optimizers.items()}  # noqa: E731
    steps = lambda: {r: int(o.iterations.numpy()) for r, o in model.optimizers.items()}  # noqa: E731
    assert scales() == {r: 32768.0 for r in base}
    assert all(v.dtype == "float32" for v in model.leader.trainable_variables)

    # Step 1: the loss was scaled up and the gradients back down (update == float32's, not 1/32768 of it).
    d16, history = leader_step(model, data(8))
    ratio = float(d16 @ d32 / (d32 @ d32))
    assert ratio == pytest.approx(1.0, abs=0.05), f"float16 leader update is {ratio:.3g}x the float32 one"
    assert scales() == {r: 32768.0 for r in base} and steps() == {r: 1 for r in base}
    # Step 2: two finite steps in a row double every role's scale.
    _, history2 = leader_step(model, data(8, seed=2))
    for h in (history, history2):
        assert all(np.isfinite(v[-1]) for v in h.values()), h
    assert steps() == {r: 2 for r in base}
    assert scales() == {r: 65536.0 for r in base}, "two finite steps must double every role's loss scale"
    assert_mixed(model, "float16")

    # An overflowing step (inf in the batch): every role halves its scale and skips the update.
    before = [v.numpy().copy() for v in model.trainable_variables]
    model.fit(data(8, seed=1, poison=True), epochs=1, shuffle=False, verbose=0)
    assert scales() == {r: 32768.0 for r in base}
    assert steps() == {r: 2 for r in base}
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables))


def test_mixed_bfloat16_trains(float32_afterwards):
    model, base, opts = tiny_mixed_cohort("mixed_bfloat16")
    assert opts == base and not any(isinstance(o, keras.optimizers.LossScaleOptimizer) for o in opts.values())
    model.compile(opts)
    before = [v.numpy().copy() for v in model.leader.trainable_variables]
    history = model.fit(data(16), epochs=1, shuffle=False, verbose=0).history
    assert all(np.isfinite(v[-1]) for v in history.values()), history
    assert {r: int(o.iterations.numpy()) for r, o in model.optimizers.items()} == {r: 2 for r in base}
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.leader.trainable_variables))
    assert_mixed(model, "bfloat16")


def test_cli_mixed_bfloat16_smoke(tmp_path):
    out = tmp_path / "bf16"
    args = ["-m", "ffsd_tf.run", "--precision=mixed_bfloat16", "--steps_per_epoch=2", f"--output_dir={out}", *SMOKE]
    proc = run_python(args, timeout=240)
    assert proc.returncode == 0, tail(proc.stderr)
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2] and all(np.isfinite(h["loss"]) for h in history)


# ----------------------------------------------------------------------------------------------
# 4. Refusals: one line on stderr, non-zero exit, nothing written


@pytest.mark.parametrize(
    "flags, needle",
    [(["--jit_compile", "--strategy=mirrored"], "jit_compile"), (["--strategy=multi_worker"], "TF_CONFIG")],
    ids=["jit_compile_mirrored", "multi_worker_without_tf_config"],
)
def test_cli_refuses(tmp_path, flags, needle):
    out = tmp_path / "refused"
    proc = run_python(["-m", "ffsd_tf.run", *flags, f"--output_dir={out}", *SMOKE], timeout=120)  # no TF_CONFIG
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0] and lines[0].startswith("error:"), lines
    assert not out.exists()
