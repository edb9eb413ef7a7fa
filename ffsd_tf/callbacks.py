"""Keras callbacks of a training run: loss-weight schedules, checkpoints, TensorBoard, progress."""

from __future__ import annotations

import math
import os
import sys
import time

import keras
import tensorflow as tf

from ffsd_tf import rundir


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/Inf; the message names the model and the loss term."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint (or history.json) could not be written: disk full, I/O error; one line."""


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops at the first step whose logs hold a NaN or Inf, naming the first bad term.

    Raised before the epoch ends, so the epoch checkpoint is never written with bad weights and
    the last good checkpoint stays the latest. Terms are checked per model (``student2/diversity``
    before ``student2/loss``), so the message points at the cause, not at a total.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        bad = [k for k, v in (logs or {}).items() if not math.isfinite(float(v))]
        if bad:
            terms = [k for k in bad if not k.endswith("/loss") and k != "loss"] or bad
            raise NonFiniteLossError(
                f"non-finite value of {terms[0]} (model {terms[0].split('/')[0]}) at epoch {self._epoch + 1}, "
                f"step {batch + 1} ({', '.join(sorted(bad))}); the last good checkpoint is kept: lower --lr or the lambdas"
            )


class EpochCheckpoint(keras.callbacks.Callback):
    """Saves a checkpoint after every epoch and keeps ``history.json`` in step with it.

    The checkpoint holds every network, every optimizer (so the LR schedule, a function of the
    optimizer's iteration count, comes back with it) and the epoch counter. The history is
    rewritten atomically *before* the checkpoint: a resumed run keeps only the entries up to the
    epoch it restores, so a kill between the two writes drops an entry that will be redone
    instead of losing one for good. Only the chief keeps the history. Each entry carries the
    epoch's wall time (``seconds``, training and evaluation) and this process' CPU time over it
    (``cpu_seconds``, all threads), so a resumed run's cost adds up.
    """

    def __init__(self, run_dir: str, checkpoint: tf.train.Checkpoint, keep: int, history: list, chief: bool = True):
        super().__init__()
        self.run_dir = run_dir
        self.history = history
        self.chief = chief
        directory = os.path.join(run_dir, rundir.CHECKPOINTS)
        # TF's manager deletes what the (untrusted) state file lists: refuse entries outside checkpoints/.
        if rundir.listed_checkpoints(run_dir) is None and os.path.lexists(os.path.join(directory, rundir.STATE_FILE)):
            raise rundir.RunDirError(f"{os.path.join(directory, rundir.STATE_FILE)} is damaged; delete it "
                                     "(the run rescans ckpt-N files)")
        self.manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=keep)
        self._epoch_start = time.perf_counter()
        self._epoch_cpu = time.process_time()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()
        self._epoch_cpu = time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        entry = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}}
        entry["seconds"] = time.perf_counter() - self._epoch_start  # training + this epoch's evaluation
        entry["cpu_seconds"] = time.process_time() - self._epoch_cpu  # every thread of this process: a shared
        # machine stretches the wall time, hardly the CPU time (compute budgets compare these)
        try:
            if self.chief:
                self.history.append(entry)
                rundir.write_json_atomic(os.path.join(self.run_dir, rundir.HISTORY), self.history)
            # Every worker takes part in a save (variables may need collective reads); non-chief
            # workers point run_dir at a scratch directory.
            self.manager.save(checkpoint_number=epoch + 1)
        except (tf.errors.ResourceExhaustedError, tf.errors.DataLossError, tf.errors.UnavailableError,
                tf.errors.PermissionDeniedError, tf.errors.InternalError, tf.errors.UnknownError, OSError) as e:
            kept = self.manager.latest_checkpoint or "none yet"
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise CheckpointWriteError(
                f"cannot write the epoch {epoch + 1} checkpoint in {os.path.join(self.run_dir, rundir.CHECKPOINTS)} "
                f"({type(e).__name__}: {first}); the last good checkpoint is kept ({kept}): free disk space "
                "and rerun the same command to resume"
            ) from None


class PerModelTensorBoard(keras.callbacks.Callback):
    """Scalars named per model (``leader/acc``, ``student1/kl``...) for train and validation.

    Keras' own TensorBoard callback prefixes names (``epoch_leader/acc``) and splits
    ``val_`` keys; this writes them as users search for them, the loss weights in use among them
    (``weights/diversity``, from the model's logs), and every learning rate (``lr/students``).
    """

    def __init__(self, log_dir: str):
        super().__init__()
        self.log_dir = log_dir
        self._writers = {}

    def _writer(self, name):
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(os.path.join(self.log_dir, name))
        return self._writers[name]

    def on_epoch_end(self, epoch, logs=None):
        step = epoch + 1
        logs = logs or {}
        with self._writer("train").as_default():
            for k, v in logs.items():
                if not k.startswith("val_"):
                    tf.summary.scalar(k, float(v), step=step)
            for role, opt in self.model.optimizers.items():
                lr = opt.learning_rate
                tf.summary.scalar(f"lr/{role}", float(lr.numpy() if hasattr(lr, "numpy") else lr), step=step)
        val = {k[4:]: v for k, v in logs.items() if k.startswith("val_")}
        if val:
            with self._writer("validation").as_default():
                for k, v in val.items():
                    tf.summary.scalar(k, float(v), step=step)
        for w in self._writers.values():
            w.flush()

    def on_train_end(self, logs=None):
        for w in self._writers.values():
            w.close()


class CompactProgress(keras.callbacks.Callback):
    """A progress bar that shows only what a user scans for: losses and accuracies per model.

    ``mode="bar"`` redraws one line per step (terminals); ``"line"`` prints one line per epoch
    (logs, CI); ``"quiet"`` prints nothing; ``"auto"`` (the default) is ``"bar"`` when the stream
    is a terminal and ``"line"`` otherwise, so a log file or captured output gets no redraws.
    """

    SHOWN = ("loss", "/acc")
    MODES = ("auto", "bar", "line", "quiet")

    def __init__(self, epochs: int | None = None, steps: int | None = None, mode: str = "auto", stream=None):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"progress mode must be one of {', '.join(self.MODES)}, got {mode!r}")
        self.stream = stream or sys.stdout
        if mode == "auto":
            isatty = getattr(self.stream, "isatty", None)
            try:
                mode = "bar" if isatty is not None and isatty() else "line"
            except (ValueError, OSError):  # a closed or detached stream
                mode = "line"
        self.epochs, self.steps, self.mode = epochs, steps, mode
        self._start = 0.0

    def _fmt(self, logs):
        keys = [k for k in logs if k == "loss" or k.endswith("/acc")]
        return " ".join(f"{k}={float(logs[k]):.4f}" for k in keys)

    def on_train_begin(self, logs=None):
        # Unset counts (the Python API's fit) come from fit's own parameters; steps may stay unknown.
        self.epochs = self.epochs or self.params.get("epochs")
        self.steps = self.steps or self.params.get("steps")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._start = time.time()

    def on_train_batch_end(self, batch, logs=None):
        if self.mode != "bar":
            return
        done = batch + 1
        width = 20
        filled = int(width * done / self.steps) if self.steps else min(width, done % (width + 1))
        bar = "=" * filled + "." * (width - filled)
        rate = done / max(time.time() - self._start, 1e-9)
        self.stream.write(
            f"\rEpoch {self._epoch + 1}/{self.epochs} [{bar}] {done}/{self.steps} {rate:.1f} step/s "
            f"{self._fmt({k: v for k, v in (logs or {}).items() if k in ('loss', 'leader/acc', 'student1/acc')})}"
        )
        self.stream.flush()

    def on_epoch_end(self, epoch, logs=None):
        if self.mode == "quiet":
            return
        logs = logs or {}
        took = time.time() - self._start
        train = self._fmt({k: v for k, v in logs.items() if not k.startswith("val_")})
        val = self._fmt({k[4:]: v for k, v in logs.items() if k.startswith("val_")})
        prefix = "\r" if self.mode == "bar" else ""
        self.stream.write(f"{prefix}Epoch {epoch + 1}/{self.epochs} {took:.0f}s | train {train}\n")
        if val:
            self.stream.write(f"    test  {val}\n")
        self.stream.flush()


class CollapseWarning(keras.callbacks.Callback):
    """Warns once when the mutual KL blew up in the first epoch and left the students at chance.

    The mutual KL (Eq. 2) at full weight from the first step can pull students with large initial
    logits to uniform predictions within a few steps (RESULTS.md: ResNet-20 on 5k CIFAR-10; the
    authors' code does the same), and they rarely recover. The signature: some step of epoch 1
    where a common student's T^2 KL exceeded ln(C) (the KL of a uniform guess to a certain one is
    ln(C); healthy cohorts stay far below), and at the end of epoch 1 every common student's
    training cross-entropy still within 10 % of ln(C), the loss of a uniform prediction. One line
    then names the cause and the flags that avoid it (no mutual KL, as the recipe; or warming it
    up). A mutual KL of weight 0 in epoch 1 moved nothing, so it is never blamed.
    """

    def __init__(self, stream=None):
        super().__init__()
        self.stream = stream or sys.stderr
        self.peak_kl = 0.0
        self._prev = {}

    def on_train_batch_end(self, batch, logs=None):
        if getattr(self, "_epoch", 0) != 0:
            return
        for key, mean in (logs or {}).items():
            if key.startswith("student") and key.endswith("/kl"):
                # Logs are running means over the epoch: recover this step's value.
                value = (batch + 1) * float(mean) - batch * self._prev.get(key, 0.0)
                self._prev[key] = float(mean)
                self.peak_kl = max(self.peak_kl, value)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        model, logs = self.model, logs or {}
        config = model.config
        # No mutual KL, or one of weight 0 (the recipe): whatever it measured moved nothing.
        if epoch != 0 or config.num_students < 2 or not config.mutual_learning or not model.loss_weight_vars["kl"].numpy():
            return
        classes = config.num_classes
        chance_ce = math.log(classes)
        students = [f"student{i + 1}" for i in range(config.num_students)]
        ces = [float(logs[f"{s}/ce"]) for s in students if f"{s}/ce" in logs]
        if self.peak_kl <= chance_ce or len(ces) < len(students) or min(ces) < 0.9 * chance_ce:
            return
        s = students[0]
        self.stream.write(
            f"warning: the mutual KL blew up in epoch 1 (a step's T^2 KL reached {self.peak_kl:.1f} > ln {classes} = "
            f"{chance_ce:.2f}) and left every common student at chance ({s}: train accuracy "
            f"{100 * float(logs[f'{s}/acc']):.1f} %, cross-entropy {float(logs[f'{s}/ce']):.2f}); drop the mutual KL "
            "and warm the other KL terms up: --lambda_kl=0 --lambda_fusion_kl_schedule=exp_warmup:5 "
            "--lambda_leader_kl_schedule=exp_warmup:5 (--flagfile=experiments/recipes/robust.flags does), or keep "
            "it warmed up: --lambda_kl_schedule=exp_warmup:5\n"
        )
        self.stream.flush()
