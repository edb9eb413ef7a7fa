"""The run configuration: one typed record of a training run, validated once, stored as ``config.json``.

::

    RunConfig
      data          DataConfig           load_dataset's arguments (its seed is runtime.seed)
      cohort        trainer.FFSDConfig   the networks; num_classes and input_shape come from the data
      teacher_run   str | None           run directory of a fixed teacher (Table II's KD / AT)
      optimization  OptimizationConfig   epochs, learning rates and their schedule, weight decays
      loss_weights  LossWeights          value and schedule of every loss weight
      runtime       RuntimeConfig        seed, determinism, devices, precision, output, checkpoints, export

Field names are the training flags' names (loss weight ``k``: ``lambda_k`` and
``lambda_k_schedule``; ``--loss_weights`` is ``LossWeights.base``), so ``RunConfig.from_flags`` is a
mapping, ``validate`` names the flag to fix, and the defaults here are the flags' defaults
(``ffsd_tf.flags`` reads them with ``default``), but for the flags a named set of loss weights
covers (``recipes.set_flag_values``: every ``lambda_*`` flag and ``leader_kl_mask``): those are
filled from ``--loss_weights`` (default ``DEFAULT_LOSS_WEIGHTS``, the recipe) where not given, and
``LossWeights()`` is the paper's set, what a config.json written before the set existed means.
``to_dict`` is ``config.json`` (``rundir.write_config`` adds the dataset's metadata under
"dataset"); ``from_dict`` reads it back; ``upgrade`` turns the config.json of a run written before
this layout into it. Every reader of a run (resume, export, visualize, report) goes through
``ffsd_tf.rundir``, which reads the file with these functions.

No TensorFlow at import (``report`` reads runs through this module): ``FFSDConfig`` and the
``LossWeights.functions`` come from ``ffsd_tf.trainer`` only when a typed config is built.
"""

from __future__ import annotations

import dataclasses
import math
import typing

VERSION = 2  # config.json layout; files without "version" are upgraded (see ``upgrade``)
# --loss_weights' default: the measured recipe, as the Python API's (README "Loss weights: the recipe
# and the paper"); the paper's flagfiles state --loss_weights=paper (tests/test_experiment_weights.py).
DEFAULT_LOSS_WEIGHTS = "recipe"
COHORT = "model"  # config.json's key of the cohort (the name it has always had)


class ConfigError(ValueError):
    """A setting or combination that cannot run; the message is one actionable line naming the flag."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """``ffsd_tf.data.load_dataset``'s arguments (the seed is ``RuntimeConfig.seed``)."""

    dataset: str = "cifar100"
    data_dir: str | None = None
    image_size: int | None = None
    validation_split: float | None = None
    cache_dir: str | None = None  # --dataset=folder: where its prepared cache lives (None: see folder.py)
    rebuild_cache: bool = False  # --dataset=folder: prepare the cache again now
    train_subset: int | None = None
    test_subset: int | None = None
    partial_batch: str = "drop_small"
    synthetic_classes: int = 10
    synthetic_train: int = 512
    synthetic_test: int = 256
    batch_size: int = 128
    eval_batch_size: int | None = None

    def load_arguments(self, seed: int) -> dict:
        """Keyword arguments of ``load_dataset(self.dataset, ...)``."""
        arguments = dataclasses.asdict(self)
        del arguments["dataset"]
        return {**arguments, "seed": seed}


@dataclasses.dataclass(frozen=True)
class OptimizationConfig:
    """One optimizer per role (``run.build_optimizers``) and the multi-step learning rate."""

    epochs: int = 299
    steps_per_epoch: int | None = None
    lr: float = 0.1
    milestones: tuple[int, ...] = (150, 225)
    lr_gamma: float = 0.1
    lr_warmup_epochs: int = 0
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    fusion_weight_decay: float = 1e-5
    decoder_lr: float = 1e-3
    decoder_weight_decay: float = 1e-4


def _paper_weights(i: int) -> dict:
    from ffsd_tf.recipes import PAPER_LOSS_WEIGHTS

    return {k: v[i] for k, v in PAPER_LOSS_WEIGHTS.items()}


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Loss weight ``k`` at epoch e is ``values[k] * schedules[k](e)`` (names and the authors'
    defaults: ``trainer.PAPER_LOSS_WEIGHTS``; schedule specs: ``schedules.parse_weight_schedule``).

    ``base`` is the named set (``--loss_weights``: "recipe", "paper", "kl_warmup") that filled the
    weights not given one by one. ``values`` and ``schedules`` are complete, so ``base`` only says
    where they came from (a ``NEUTRAL`` setting). A config.json without it (written before the
    flag) reads as "paper", the defaults of the time; a weight it lacks takes ``base``'s value."""

    values: dict = dataclasses.field(default_factory=lambda: _paper_weights(0))
    schedules: dict = dataclasses.field(default_factory=lambda: _paper_weights(1))
    base: str = "paper"

    def functions(self) -> dict:
        """name -> callable(epoch), what ``FFSD(loss_weights=...)`` takes."""
        from ffsd_tf.trainer import loss_weight_schedules

        try:
            return loss_weight_schedules(self.values, self.schedules)
        except ValueError as e:
            raise ConfigError(f"--lambda_*_schedule: {e}") from None


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """How and where the run executes; only ``seed`` and ``precision`` change what it computes."""

    seed: int = 0
    deterministic: bool = True
    precision: str = "float32"
    strategy: str = "default"
    jit_compile: bool = False
    output_dir: str = "runs/default"
    resume: bool = True
    force_resume: bool = False
    eval_every: int = 1
    keep_checkpoints: int = 3
    verbose: str = "auto"
    export: bool = False
    export_dir: str | None = None
    reexport: bool = False
    export_average: bool = False


SECTIONS = {"data": DataConfig, "optimization": OptimizationConfig, "runtime": RuntimeConfig}

# Settings that do not change what a run computes: they may differ when a run is resumed (and
# report does not list them as differing). Every other setting does (seed, data, model,
# optimisation, loss weights and schedules, precision): resuming with another value is refused
# unless --force_resume. --epochs may change (grow to extend a run): the LR and loss-weight
# schedules depend on the milestones and schedule settings, not on the number of epochs.
NEUTRAL = frozenset({
    "loss_weights",  # the named set only fills the lambda_* (and leader_kl_mask) values compared here
    "output_dir", "resume", "force_resume", "verbose", "eval_batch_size", "export", "export_dir",
    "keep_checkpoints", "eval_every", "epochs", "jit_compile", "strategy", "deterministic", "reexport",
    "export_average",
    "cache_dir", "rebuild_cache",
})


# ------------------------------------------------------------------------------ values and text
_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", tuple: "a list of integers"}


def _hint(name: str):
    """The type of setting ``name`` (None when it is no setting: a cohort field, an unknown name)."""
    for kind in SECTIONS.values():
        if name in {f.name for f in dataclasses.fields(kind)}:
            return typing.get_type_hints(kind)[name]
    if name == "teacher_run":
        return str | None
    if name == "loss_weights":
        return str
    if name.startswith("lambda_"):
        return str if name.endswith("_schedule") else float
    return None


def _base(hint) -> tuple[type, bool]:
    """(int | float | bool | str | tuple, optional) of a field's type."""
    args = typing.get_args(hint)
    if type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return _base(inner)[0], True
    return typing.get_origin(hint) or hint, False


def _coerce(name: str, hint, value):
    """A JSON value as the setting's type; ConfigError naming it otherwise."""
    kind, optional = _base(hint)
    integer = isinstance(value, int) and not isinstance(value, bool)
    if value is None and optional:
        return None
    if (kind is bool and isinstance(value, bool)) or (kind is int and integer) or (
            kind is str and isinstance(value, str)):
        return value
    if kind is float and (integer or isinstance(value, float)):
        return float(value)
    if kind is tuple and isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool)
                                                                 for v in value):
        return tuple(value)
    raise ConfigError(f"{name}={value!r:.40} is not {_KINDS[kind]}{' or null' if optional else ''}")


def parse_value(name: str, text: str):
    """Flag value ``text`` (a flagfile line, the old config.json "flags" section) as setting ``name``'s
    type; ConfigError ``--name=text is not an integer`` etc. otherwise."""
    if _hint(name) is None:
        raise ConfigError(f"--{name} is no setting of a run")
    kind, optional = _base(_hint(name))
    if optional and text in ("", "None"):
        return None
    try:
        if kind is bool:
            return {"true": True, "1": True, "false": False, "0": False}[text.lower()]
        if kind is tuple:
            return tuple(int(v) for v in text.split(",") if v.strip())
        return kind(text)
    except (ValueError, KeyError):
        raise ConfigError(f"--{name}={text[:40]} is not {_KINDS[kind]}") from None


def value_text(value) -> str:
    """A setting's value as a flag writes it (lists comma-separated, None empty)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(value_text(v) for v in value)
    return str(value)


def flag_text(name: str, value) -> str:
    """``--name=value`` (booleans ``--name`` / ``--noname``), as in messages and flagfiles."""
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no{name}"
    return f"--{name}={value_text(value)}"


def default(name: str):
    """The default of a setting or a cohort field: the training flags' defaults."""
    for kind in SECTIONS.values():
        for f in dataclasses.fields(kind):
            if f.name == name:
                return f.default
    if name == "teacher_run":
        return None
    if name == "loss_weights":
        return DEFAULT_LOSS_WEIGHTS
    if name.startswith("lambda_"):
        key = name[len("lambda_"):]
        return _paper_weights(1)[key[: -len("_schedule")]] if key.endswith("_schedule") else _paper_weights(0)[key]
    from ffsd_tf.trainer import FFSDConfig

    return {f.name: f.default for f in dataclasses.fields(FFSDConfig)}[name]


# ------------------------------------------------------------------------------ config.json layout
def check_layout(d: dict) -> None:
    """ConfigError unless ``d``'s settings have this layout: sections of known settings of the right
    types (the cohort is checked when it is built: ``cohort_from_dict``)."""
    for key, kind in SECTIONS.items():
        if not isinstance(d.get(key, {}), dict):
            raise ConfigError(f"'{key}' is not a section of settings")
        _section_values(kind, d.get(key, {}), key)
    weights = d.get("loss_weights", {})
    if not isinstance(weights, dict) or not all(isinstance(weights.get(k, {}), dict) for k in ("values", "schedules")):
        raise ConfigError("'loss_weights' is not a section of 'values' and 'schedules'")
    _weight_values(weights)
    _coerce("teacher_run", str | None, d.get("teacher_run"))


def settings(d: dict) -> dict:
    """name -> value of every setting of a config.json dict (this layout), all but the cohort's."""
    out = {}
    for key in SECTIONS:
        out.update(d.get(key, {}))
    out["teacher_run"] = d.get("teacher_run")
    weights = d.get("loss_weights", {})
    out.update({f"lambda_{k}": v for k, v in weights.get("values", {}).items()})
    out.update({f"lambda_{k}_schedule": v for k, v in weights.get("schedules", {}).items()})
    out["loss_weights"] = weights.get("base", "paper")
    return out


def nest(flat: dict) -> dict:
    """The inverse of ``settings``: flat settings into config.json's sections."""
    d = {key: {} for key in SECTIONS}
    d["loss_weights"] = {"values": {}, "schedules": {}}
    owner = {f.name: key for key, kind in SECTIONS.items() for f in dataclasses.fields(kind)}
    for name, value in flat.items():
        if name == "teacher_run":
            d["teacher_run"] = value
        elif name == "loss_weights":
            d["loss_weights"]["base"] = value
        elif name.startswith("lambda_") and name.endswith("_schedule"):
            d["loss_weights"]["schedules"][name[len("lambda_"): -len("_schedule")]] = value
        elif name.startswith("lambda_"):
            d["loss_weights"]["values"][name[len("lambda_"):]] = value
        elif name in owner:
            d[owner[name]][name] = value
        else:
            raise ConfigError(f"unknown setting {name!r}")
    return d


def upgrade(saved: dict, flag_values: dict[str, str]) -> dict:
    """The config.json of a run written before this layout (``{"flags"?, "model", "dataset"}``) in it.

    ``flag_values``: name -> value text of the run's flags (its "flags" section, or flags.txt for
    runs written before that). Settings it lacks take their defaults when read (``from_dict``),
    except what the dataset metadata knows: the dataset, its folder, the synthetic classes, and the
    partial-batch policy ("keep" for runs written before the policy existed). A value that does not
    parse is a ConfigError naming the flag.
    """
    meta = saved["dataset"]
    flat = {name: parse_value(name, text) for name, text in flag_values.items() if _hint(name) is not None}
    if isinstance(meta.get("name"), str):
        flat["dataset"] = meta["name"]
    flat["data_dir"] = meta.get("data_dir") or flat.get("data_dir")
    if isinstance(meta.get("num_classes"), int) and "synthetic_classes" not in flat:
        flat["synthetic_classes"] = meta["num_classes"]
    flat.setdefault("partial_batch", meta.get("partial_batch", "keep"))
    return {"version": VERSION, **nest(flat), COHORT: saved[COHORT], "dataset": meta}


def cohort_to_dict(cohort) -> dict:
    d = dataclasses.asdict(cohort)
    d["input_shape"] = None if d["input_shape"] is None else list(d["input_shape"])
    return d


def cohort_from_dict(d: dict):
    """The FFSDConfig of config.json's "model" section; ConfigError when it is not one."""
    from ffsd_tf.trainer import FFSDConfig

    try:
        return FFSDConfig(**{**d, "input_shape": tuple(d["input_shape"])})
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"'{COHORT}': {type(e).__name__}: {e}") from None


def _section_values(kind, values: dict, key: str) -> dict:
    hints = typing.get_type_hints(kind)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(f"unknown setting {key}.{unknown[0]}")
    return {name: _coerce(name, hints[name], value) for name, value in values.items()}


def _weight_values(d: dict) -> tuple[dict, dict, str]:
    from ffsd_tf.recipes import NAMED_LOSS_WEIGHTS

    values = {k: _coerce(f"lambda_{k}", float, v) for k, v in d.get("values", {}).items()}
    schedules = {k: _coerce(f"lambda_{k}_schedule", str, v) for k, v in d.get("schedules", {}).items()}
    base = _coerce("loss_weights", str, d.get("base", "paper"))
    if base not in NAMED_LOSS_WEIGHTS:
        raise ConfigError(f"loss_weights={base[:40]} is no named set; choose one of: {', '.join(NAMED_LOSS_WEIGHTS)}")
    return values, schedules, base


def _loss_weights(d: dict) -> LossWeights:
    from ffsd_tf.recipes import NAMED_LOSS_WEIGHTS

    values, schedules, base = _weight_values(d)
    named = NAMED_LOSS_WEIGHTS[base]
    unknown = sorted((set(values) | set(schedules)) - set(named))
    if unknown:
        raise ConfigError(f"unknown loss weight {unknown[0]!r}")
    return LossWeights({**{k: v for k, (v, _) in named.items()}, **values},
                       {**{k: spec for k, (_, spec) in named.items()}, **schedules}, base)


# ------------------------------------------------------------------------------ the run
@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A training run (see the module docstring). ``cohort.num_classes`` and ``cohort.input_shape``
    are None until ``with_data``: they come from the data."""

    cohort: typing.Any = None  # trainer.FFSDConfig
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    teacher_run: str | None = None
    optimization: OptimizationConfig = dataclasses.field(default_factory=OptimizationConfig)
    loss_weights: LossWeights = dataclasses.field(default_factory=LossWeights)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)

    @classmethod
    def from_flags(cls, flag_values) -> RunConfig:
        """The run that parsed training flags (``ffsd_tf.flags``, absl FlagValues) describe. A flag
        that ``--loss_weights`` covers and the command line did not give (None) takes the set's
        value (``recipes.set_flag_values``); a given one keeps its own."""
        from ffsd_tf.recipes import set_flag_values
        from ffsd_tf.trainer import LOSS_WEIGHTS, FFSDConfig

        def read(kind):
            return {f.name: flag_value(f.name, getattr(flag_values, f.name)) for f in dataclasses.fields(kind)}

        base = flag_values.loss_weights
        filled = set_flag_values(base, leader=flag_values.leader)

        def given(name):
            value = getattr(flag_values, name)
            return filled[name] if value is None and name in filled else value

        try:  # the trainer checks num_students and temperature itself; its fields are the flags' names
            cohort = FFSDConfig(**{**{k: given(k) for k in _COHORT_FLAGS}, "num_classes": None,
                                   "input_shape": None})
        except ValueError as e:
            raise ConfigError(f"--{e}") from None
        return cls(
            cohort=cohort,
            teacher_run=flag_values.teacher_run,
            loss_weights=LossWeights({k: given(f"lambda_{k}") for k in LOSS_WEIGHTS},
                                     {k: given(f"lambda_{k}_schedule") for k in LOSS_WEIGHTS}, base),
            **{key: kind(**read(kind)) for key, kind in SECTIONS.items()},
        )

    def with_data(self, num_classes: int, input_shape, teacher: str | None = None) -> RunConfig:
        """This run for the loaded data (and the backbone of ``teacher_run``'s network)."""
        try:
            cohort = dataclasses.replace(self.cohort, num_classes=int(num_classes), input_shape=tuple(input_shape),
                                         teacher=teacher)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return dataclasses.replace(self, cohort=cohort)

    def to_dict(self) -> dict:
        """config.json's settings and cohort (rundir adds the dataset's metadata)."""
        return {
            "version": VERSION,
            "data": dataclasses.asdict(self.data),
            COHORT: cohort_to_dict(self.cohort),
            "teacher_run": self.teacher_run,
            "optimization": {**dataclasses.asdict(self.optimization), "milestones": list(self.optimization.milestones)},
            "loss_weights": {"base": self.loss_weights.base, "values": dict(self.loss_weights.values),
                             "schedules": dict(self.loss_weights.schedules)},
            "runtime": dataclasses.asdict(self.runtime),
        }

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        """``to_dict``'s layout back (missing settings take their defaults); ConfigError for a wrong
        type or an unknown name."""
        check_layout(d)
        return cls(
            cohort=cohort_from_dict(d[COHORT]),
            teacher_run=d.get("teacher_run"),
            loss_weights=_loss_weights(d.get("loss_weights", {})),
            **{key: kind(**_section_values(kind, d.get(key, {}), key)) for key, kind in SECTIONS.items()},
        )

    def settings(self) -> dict:
        """name -> value of every setting but the cohort's (JSON values: lists, not tuples)."""
        return settings(self.to_dict())

    def replace(self, **changes) -> RunConfig:
        """This run with some settings changed, by flag name: ``config.replace(seed=1, lr=0.05)``."""
        d = self.to_dict()
        return RunConfig.from_dict({**d, **nest({**settings(d), **changes})})

    def validate(self, num_replicas: int = 1) -> None:
        """Raises ConfigError for impossible values or combinations (one line naming the flag)."""
        from ffsd_tf.networks import available as available_networks

        s, c = self.settings(), self.cohort
        for name, value in {**s, "temperature": c.temperature}.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"--{name} must be a finite number, got {value}; "
                                  f"pass a number such as {default(name)}")
        self._validate_choices(c, available_networks())
        self._validate_numbers(s, c)
        ms = list(self.optimization.milestones)
        if any(b <= a for a, b in zip(ms, ms[1:])) or any(m < 1 for m in ms):
            raise ConfigError(f"--milestones must be positive and increasing, got {ms}")
        if ms and ms[-1] >= s["epochs"]:
            raise ConfigError(f"--milestones {ms} reach beyond --epochs={s['epochs']}; drop them or train longer")
        if s["lr_warmup_epochs"] >= s["epochs"] and s["lr_warmup_epochs"] > 0:
            raise ConfigError(f"--lr_warmup_epochs={s['lr_warmup_epochs']} must be < --epochs={s['epochs']}")
        if s["jit_compile"] and s["strategy"] != "default":
            raise ConfigError(f"--jit_compile fails under --strategy={s['strategy']} (XLA works on one device only); "
                              "drop one of them")
        if s["batch_size"] % num_replicas:
            raise ConfigError(f"--batch_size={s['batch_size']} is not divisible by the {num_replicas} replicas; "
                              "use a multiple")
        if not c.leader and c.self_distillation == "leader":
            raise ConfigError("--self_distillation=leader needs a leader; drop --noleader or choose students/none")
        if self.teacher_run is not None and c.leader:
            raise ConfigError("--teacher_run distils a fixed teacher into the common students only; add --noleader")
        if c.leader and not c.fusion and c.self_distillation == "leader":
            raise ConfigError("--self_distillation=leader distils the fused map, which needs --fusion")
        if s["export_average"] and not s["export"]:
            raise ConfigError("--export_average chooses what --export publishes; add --export")
        if s["export_average"] and not c.ema_decay:
            raise ConfigError("--export_average exports the leader's weight average, which needs --ema_decay > 0 "
                              "(e.g. 0.995); add it or drop --export_average")

    def _validate_choices(self, c, networks) -> None:
        from ffsd_tf.data import DATASETS
        from ffsd_tf.distribute import PRECISIONS, STRATEGIES

        if c.model not in networks:
            raise ConfigError(f"--model={c.model} is unknown; choose one of: {', '.join(networks)}")
        for name, value, choices in (("dataset", self.data.dataset, sorted(DATASETS)),
                                     ("partial_batch", self.data.partial_batch, ("drop_small", "keep", "drop")),
                                     ("strategy", self.runtime.strategy, STRATEGIES),
                                     ("precision", self.runtime.precision, PRECISIONS),
                                     ("verbose", self.runtime.verbose, ("auto", "bar", "line", "quiet"))):
            if value not in choices:
                raise ConfigError(f"--{name}={value} is unknown; choose one of: {', '.join(choices)}")

    def _validate_numbers(self, s: dict, c) -> None:
        if c.num_students < 1:
            raise ConfigError(f"--num_students must be >= 1, got {c.num_students}")
        for name in ("batch_size", "epochs", "eval_every", "keep_checkpoints", "synthetic_train", "synthetic_test"):
            if s[name] < 1:
                raise ConfigError(f"--{name} must be >= 1, got {s[name]}")
        for name in ("eval_batch_size", "steps_per_epoch", "train_subset", "test_subset"):
            if s[name] is not None and s[name] < 1:
                raise ConfigError(f"--{name} must be >= 1, got {s[name]}")
        if s["synthetic_classes"] < 2:
            raise ConfigError(f"--synthetic_classes must be >= 2, got {s['synthetic_classes']}")
        if s["image_size"] is not None and s["image_size"] < 8:
            raise ConfigError(f"--image_size must be >= 8, got {s['image_size']}")
        for name, value in (("lr", s["lr"]), ("decoder_lr", s["decoder_lr"]), ("temperature", c.temperature)):
            if value <= 0:
                raise ConfigError(f"--{name} must be > 0, got {value}")
        for name in ("weight_decay", "fusion_weight_decay", "decoder_weight_decay", "momentum", "lr_warmup_epochs"):
            if s[name] < 0:
                raise ConfigError(f"--{name} must be >= 0, got {s[name]}")
        if not 0 < s["lr_gamma"] <= 1:
            raise ConfigError(f"--lr_gamma must be in (0, 1], got {s['lr_gamma']}")
        for key, value in self.loss_weights.values.items():
            if value < 0:
                raise ConfigError(f"--lambda_{key} must be >= 0, got {value}")
        self.loss_weights.functions()


# Cohort fields set by a flag of the same name (num_classes and input_shape come from the data,
# teacher from --teacher_run's config.json).
_COHORT_FLAGS = ("model", "num_students", "temperature", "mutual_learning", "leader", "fusion", "diversity",
                 "self_distillation", "sync_batchnorm", "teacher_loss", "leader_kl_mask", "ema_decay", "ema_teacher")


def flag_value(name: str, value):
    """A parsed flag's value as setting ``name``'s type (absl gives --milestones as a list of strings)."""
    if _base(_hint(name))[0] is tuple and value is not None:
        return parse_value(name, ",".join(value))
    return value
