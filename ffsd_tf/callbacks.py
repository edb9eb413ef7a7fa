"""Keras callbacks of a training run (``ffsd_tf.run``): the non-finite stop, checkpoints, TensorBoard.

These know the run directory (``ffsd_tf.rundir``). What ``FFSD.fit`` shows by itself, the progress
display and the blow-up warning, lives in ``ffsd_tf.progress`` (a library module that knows no run
directory); ``CompactProgress`` and ``CollapseWarning`` are re-exported here for old imports.
"""

from __future__ import annotations

import math
import os
import time

import keras
import tensorflow as tf

from ffsd_tf import rundir
from ffsd_tf.progress import CollapseWarning, CompactProgress  # noqa: F401  (re-exported)


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
