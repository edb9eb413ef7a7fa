"""What ``FFSD.fit`` shows while it trains: the compact progress display and the blow-up warning.

A library module: it knows Keras and the logs ``FFSD.train_step`` writes, nothing of a run
directory, flags or configs (``ffsd_tf.callbacks`` holds the run's own callbacks: checkpoints,
TensorBoard, the non-finite stop; it re-exports these two). ``tests/test_layering.py`` holds it so.
"""

from __future__ import annotations

import math
import sys
import time

import keras


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
    """Warns once when the mutual KL blew up in the first epoch and left every common student at chance.

    The mutual KL (Eq. 2) at full weight from the first step can pull students with large initial
    logits to uniform predictions within a few steps (RESULTS.md: ResNet-20 on 5k CIFAR-10; the
    authors' code does the same), and they rarely recover. It fires only when all of these hold
    (C classes, all measured in epoch 1; a fit resumed later is never checked):

    * the mutual KL had a weight above 0 in epoch 1 (one of weight 0 moved nothing: never blamed);
    * some step's T^2 KL of a common student exceeded ln C (the KL of a uniform guess to a certain
      one; healthy cohorts stay far below);
    * every common student is **at chance**: its epoch-1 training accuracy below
      ``CHANCE_FACTOR / C`` (1.5 times chance: 37.5 % for 4 classes, 15 % for 10; a student that
      learned anything beats that within an epoch) **and** its training cross-entropy at least
      ``CE_FRACTION`` (0.9) of ln C, the loss of a uniform prediction.

    The one line names what it measured (the peak KL, each common student's train accuracy against
    chance 1/C and its cross-entropy against ln C) and the flags that avoid the blow-up.
    """

    CHANCE_FACTOR = 1.5
    CE_FRACTION = 0.9

    def __init__(self, stream=None):
        super().__init__()
        self.stream = stream or sys.stderr
        self.peak_kl = 0.0
        self._prev = {}

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if getattr(self, "_epoch", 0) != 0:
            return
        for key, mean in (logs or {}).items():
            if key.startswith("student") and key.endswith("/kl"):
                # Logs are running means over the epoch: recover this step's value.
                value = (batch + 1) * float(mean) - batch * self._prev.get(key, 0.0)
                self._prev[key] = float(mean)
                self.peak_kl = max(self.peak_kl, value)

    def at_chance(self, logs, num_students: int, classes: int) -> list[tuple[str, float, float]] | None:
        """(name, train accuracy, cross-entropy) of every common student when all are at chance
        (see the class docstring), else None (also when a student's accuracy or CE was not logged)."""
        measured = []
        for i in range(num_students):
            name = f"student{i + 1}"
            if f"{name}/acc" not in logs or f"{name}/ce" not in logs:
                return None
            acc, ce = float(logs[f"{name}/acc"]), float(logs[f"{name}/ce"])
            if not (acc < self.CHANCE_FACTOR / classes and ce >= self.CE_FRACTION * math.log(classes)):
                return None
            measured.append((name, acc, ce))
        return measured

    def on_epoch_end(self, epoch, logs=None):
        model, logs = self.model, logs or {}
        config = model.config
        if epoch != 0 or config.num_students < 2 or not config.mutual_learning:
            return
        if not model.loss_weight_vars["kl"].numpy():  # a mutual KL of weight 0 moved nothing
            return
        classes = config.num_classes
        chance_ce = math.log(classes)
        if self.peak_kl <= chance_ce:
            return
        students = self.at_chance(logs, config.num_students, classes)
        if students is None:
            return
        measured = "; ".join(f"{name} train accuracy {100 * acc:.1f} % (chance {100 / classes:.1f} %), "
                             f"cross-entropy {ce:.2f} (ln {classes} = {chance_ce:.2f})" for name, acc, ce in students)
        self.stream.write(
            f"warning: the mutual KL blew up in epoch 1 (a step's T^2 KL reached {self.peak_kl:.1f} > "
            f"ln {classes} = {chance_ce:.2f}) and left every common student at chance ({measured}); drop the mutual "
            "KL and warm the other KL terms up: --loss_weights=recipe, the default (--lambda_kl=0 "
            "--lambda_fusion_kl_schedule=exp_warmup:5 --lambda_leader_kl_schedule=exp_warmup:5), or keep it "
            "warmed up: --lambda_kl_schedule=exp_warmup:5\n"
        )
        self.stream.flush()
