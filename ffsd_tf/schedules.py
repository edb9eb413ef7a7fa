"""Epoch schedules: loss-weight factors and the multi-step learning rate.

Loss weights.  Every FFSD loss weight is ``base_value * factor(epoch)`` with
``epoch`` **1-based** (the authors loop ``for epoch in range(1, 300)``).  The
factor comes from a string spec (they live in flagfiles), parsed by
``parse_weight_schedule``:

  ``constant``                     1
  ``exp_warmup:E``                 exp(-5 (1 - e/E)^2) for e <= E, else 1
                                   (the authors' ``lambda_warmup``, E = 5)
  ``linear_warmup:E``              min(1, e/E)
  ``piecewise:E1=V1,E2=V2,...``    V of the largest Ei <= e (0 before E1)

Learning rate.  ``MultiStepLR`` is a Keras ``LearningRateSchedule`` of the
optimizer's 0-based iteration count that reproduces torch's ``MultiStepLR``
stepped once per epoch, optionally preceded by a per-iteration linear warm-up
(the paper's ImageNet recipe).
"""
import dataclasses
import math
import numbers

import keras
from keras import ops

__all__ = ["WeightSchedule", "parse_weight_schedule", "MultiStepLR",
           "validate_milestones"]

_VALID_FORMS = ("constant | exp_warmup:E | linear_warmup:E | "
                "piecewise:E1=V1,E2=V2,... (E: integers, E >= 1 for warm-ups, "
                "piecewise Ei >= 0 strictly increasing)")


@dataclasses.dataclass(frozen=True)
class WeightSchedule:
    """Loss-weight factor as a function of the 1-based epoch.

    ``kind`` is one of ``constant``, ``exp_warmup``, ``linear_warmup``,
    ``piecewise``; ``length`` is E for the warm-ups; ``points`` are the
    ``(epoch, value)`` pairs of ``piecewise``.  ``str()`` gives the spec back.
    """

    kind: str
    length: int = 0
    points: tuple = ()
    spec: str = dataclasses.field(default="", compare=False)

    def __call__(self, epoch: int) -> float:
        epoch = _as_int(epoch, "epoch")
        if epoch < 1:
            raise ValueError(f"epoch is 1-based, got {epoch}")
        if self.kind == "constant":
            return 1.0
        if self.kind == "exp_warmup":
            if epoch >= self.length:
                return 1.0
            return math.exp(-5.0 * (1.0 - epoch / self.length) ** 2)
        if self.kind == "linear_warmup":
            return min(1.0, epoch / self.length)
        value = 0.0  # piecewise
        for start, v in self.points:
            if start <= epoch:
                value = v
        return value

    def __str__(self) -> str:
        return self.spec


def parse_weight_schedule(spec: str) -> WeightSchedule:
    """Parses a loss-weight schedule spec (see module docstring)."""

    def bad(reason):
        return ValueError(f"bad weight schedule {spec!r} ({reason}); "
                          f"valid forms: {_VALID_FORMS}")

    if not isinstance(spec, str):
        raise bad("not a string")
    text = spec.strip()
    kind, sep, arg = (part.strip() for part in text.partition(":"))
    if kind == "constant" and not sep:
        return WeightSchedule("constant", spec=text)
    if kind in ("exp_warmup", "linear_warmup") and sep:
        try:
            length = int(arg)
        except ValueError:
            raise bad(f"E must be an integer, got {arg!r}") from None
        if length < 1:
            raise bad("E must be >= 1")
        return WeightSchedule(kind, length=length, spec=text)
    if kind == "piecewise" and sep:
        points = []
        for item in arg.split(","):
            start, eq, value = (p.strip() for p in item.partition("="))
            try:
                if not eq:
                    raise ValueError
                point = (int(start), float(value))
            except ValueError:
                raise bad(f"expected E=V, got {item.strip()!r}") from None
            if not math.isfinite(point[1]):
                raise bad(f"value must be finite, got {value!r}")
            points.append(point)
        starts = [p[0] for p in points]
        if starts[0] < 0 or any(b <= a for a, b in zip(starts, starts[1:])):
            raise bad("epochs must be >= 0 and strictly increasing")
        return WeightSchedule("piecewise", points=tuple(points), spec=text)
    raise bad("unknown form")


def _as_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def validate_milestones(milestones, epochs=None):
    """Checks milestones are integers, > 0, strictly increasing and < epochs.

    ``epochs=None`` skips the upper bound.  Returns them as a tuple of ints.
    """
    try:
        ms = tuple(_as_int(m, "milestone") for m in milestones)
    except (TypeError, ValueError):
        ms = None
    if (ms is None or any(m <= 0 for m in ms)
            or any(b <= a for a, b in zip(ms, ms[1:]))
            or (epochs is not None and ms and ms[-1] >= epochs)):
        bound = "" if epochs is None else f" and < epochs={epochs}"
        raise ValueError(f"bad milestones {list(milestones)!r}: must be "
                         f"positive integers, strictly increasing{bound}")
    return ms


@keras.saving.register_keras_serializable(package="ffsd_tf")
class MultiStepLR(keras.optimizers.schedules.LearningRateSchedule):
    """torch ``MultiStepLR`` (stepped per epoch) as a per-iteration schedule.

    For the optimizer's 0-based iteration ``step``, with
    ``epoch0 = step // steps_per_epoch``::

        lr = base_lr * gamma ** (number of milestones m with epoch0 >= m)

    e.g. milestones (150, 225): 1-based epochs 1..150 use base_lr, 151..225
    ``base_lr*gamma``, later ``base_lr*gamma**2``.  With ``warmup_epochs=W > 0``
    the first ``W * steps_per_epoch`` steps instead ramp linearly,
    ``lr = base_lr * (step + 1) / (W * steps_per_epoch)``, reaching base_lr on
    the last warm-up step.  Pure tensor ops: works in tf.function and XLA.
    """

    def __init__(self, base_lr, milestones, gamma=0.1, *, steps_per_epoch,
                 warmup_epochs=0):
        self.milestones = validate_milestones(milestones)
        self.steps_per_epoch = _as_int(steps_per_epoch, "steps_per_epoch")
        self.warmup_epochs = _as_int(warmup_epochs, "warmup_epochs")
        if self.steps_per_epoch < 1 or self.warmup_epochs < 0:
            raise ValueError(
                f"need steps_per_epoch >= 1 and warmup_epochs >= 0, got "
                f"{steps_per_epoch} and {warmup_epochs}")
        self.base_lr = float(base_lr)
        self.gamma = float(gamma)
        # lr after k milestones, computed in float64 on the host.
        self._values = [self.base_lr * self.gamma ** k
                        for k in range(len(self.milestones) + 1)]

    def __call__(self, step):
        step = ops.cast(step, "int64")
        epoch0 = ops.floor_divide(step, self.steps_per_epoch)
        passed = ops.zeros((), "int64")
        for m in self.milestones:
            passed = passed + ops.cast(epoch0 >= m, "int64")
        dtype = "float64" if keras.config.floatx() == "float64" else "float32"  # float64: the parity harness
        lr = ops.take(ops.convert_to_tensor(self._values, dtype), passed)
        if self.warmup_epochs:
            warm_steps = self.warmup_epochs * self.steps_per_epoch
            ramp = (ops.cast(step + 1, dtype) / warm_steps) * self.base_lr
            lr = ops.where(step < warm_steps, ramp, lr)
        return lr

    def get_config(self):
        return {"base_lr": self.base_lr, "milestones": list(self.milestones),
                "gamma": self.gamma, "steps_per_epoch": self.steps_per_epoch,
                "warmup_epochs": self.warmup_epochs}
