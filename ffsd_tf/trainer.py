"""The FFSD trainer: one ``keras.Model`` holding the whole cohort (paper Alg. 1).

``FFSD`` holds ``common_students`` (S_1..S_n), the ``leader`` (S_0) with its training-only
``trans_fusion`` head (sigma of Eq. 5), the ``fusion`` module (Eq. 4) and the self-distillation
``sd_decoders`` (Eq. 10). ``train_step`` runs **one** forward pass of every network and **one**
backward pass: every cross-model signal is stop-gradiented exactly where the authors' code has
``.detach()``, so the gradient of the summed losses with respect to one sub-model's variables is
that sub-model's own gradient (tested). Each role's optimizer then applies its own slice:

=========  ===========================================  ======================================
role        variables                                     authors' optimizer
=========  ===========================================  ======================================
students    every common student                          SGD nesterov 0.1, coupled L2 1e-4
leader      leader backbone + trans_fusion (sigma)        SGD nesterov 0.1, coupled L2 1e-4
fusion      fusion module + fusion classifier             SGD nesterov 0.1, coupled L2 1e-5
decoders    every SD decoder                              Adam 1e-3, coupled L2 1e-4
=========  ===========================================  ======================================

(One optimizer per role equals one per network: slots are per variable and every network steps
every iteration.)

Losses per network, as coded by the authors (see ``docs/paper_vs_code.md``); the table
``loss_terms.LOSS_TERMS`` (model, term, weight) is their single statement: ``compute_losses``
computes each model's unweighted terms and sums them weighted as its rows say, and the training
metrics are its rows:

* student i:   CE + w_kl * T^2 * mean_{j!=i} KL(p_j || p_i)                        (Eq. 2)
               + w_div * [Eq. 9 last-layer diversity vs student i-1                (Eq. 11)
                          + shallow terms vs the student decoder's output]
* fusion:      CE(z_f) + w_fusion_kl * T^2 KL(p_e || p_f)                          (Eq. 4)
* leader:      CE + w_leader_kl * T^2 KL(p_f || p_0)
               + w_fusion * [A-loss(F_0^L, F_f) + A-loss(sigma(F_0^L), F_e)        (Eq. 5)
                             + shallow terms vs the leader decoder's output of F_f] (Eq. 13)
* decoder:     w_sd * Eq. (10) on its own network's maps

An optional fixed **teacher** (a trained network loaded from another run, Table II's offline KD
and AT rows) adds to every common student ``w_teacher_kd * T^2 KL(p_T || p_i)`` (Hinton et al.)
and/or ``w_teacher_at * sum_m A-loss(F_i^m, F_T^m)`` (attention transfer, Zagoruyko and
Komodakis). The teacher runs in inference mode, has no trainable variables and no optimizer.

The ``w_*`` are loss-weight schedules of the epoch (the paper's warm-up is one), held in
non-trainable variables that ``set_epoch`` updates. ``FFSD.fit`` calls it at the start of every
epoch itself (Keras' ``on_epoch_begin`` hook), so a plain ``fit(ds, epochs=N)`` trains with the
schedules and logs each weight (``weights/<name>``) in its history. Named sets, in
``ffsd_tf.recipes``: ``RECIPE_LOSS_WEIGHTS`` (the Python API's default: no mutual KL, the fusion
and leader KL warmed up; with ``RECIPE_OPTIONS``, the leader's teacher-correct KL mask),
``PAPER_LOSS_WEIGHTS`` (the authors' code; ``--loss_weights=paper``) and ``KL_WARMUP_LOSS_WEIGHTS``
(the paper's with every KL term warmed up).

Python API (README "Use it from Python")::

    model = FFSD("resnet20", num_classes=10, input_shape=(32, 32, 3))   # or FFSD(any_backbone)
    model.compile()                      # the paper's optimizers, one per role
    model.fit(train_ds, epochs=30, validation_data=test_ds)
    leader = model.deployable_leader()
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import keras
import tensorflow as tf

from ffsd_tf import averaging, loss_terms, losses
from ffsd_tf.attention import diversity_feature_target, loss_float
from ffsd_tf.fusion import build_fusion_module, build_trans_fusion
from ffsd_tf.keras_adapter import KerasPrivateOverrides
from ffsd_tf.networks import build_network, custom
from ffsd_tf.networks.layers import synchronized_batchnorm
from ffsd_tf.recipes import (  # noqa: F401  (re-exported: the trainer's public names)
    LOSS_WEIGHTS,
    NAMED_LOSS_WEIGHTS,
    PAPER_LOSS_WEIGHTS,
    RECIPE_LOSS_WEIGHTS,
    RECIPE_OPTIONS,
    recipe_options,
)
from ffsd_tf.schedules import parse_weight_schedule
from ffsd_tf.self_distillation import build_sd_decoder

DIVERSITY_MODES = ("attention", "l2", "none")
SD_MODES = ("both", "students", "leader", "none")
TEACHER_LOSSES = ("kd", "at", "kd_at")
LEADER_KL_MASKS = ("none", "teacher_correct")
ROLES = ("students", "leader", "fusion", "decoders")
# The loss weights (PAPER_LOSS_WEIGHTS, RECIPE_LOSS_WEIGHTS...) live in ffsd_tf.recipes.


def loss_weight_schedules(values: Mapping[str, float] | None = None, schedules: Mapping[str, str] | None = None,
                          base: str = "paper"):
    """name -> callable(epoch) = value * schedule(epoch); ``base`` (a ``NAMED_LOSS_WEIGHTS`` key:
    "paper", "recipe", "kl_warmup") fills the rest."""
    values, schedules = dict(values or {}), dict(schedules or {})
    unknown = (set(values) | set(schedules)) - set(LOSS_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown loss weights {sorted(unknown)}; known: {LOSS_WEIGHTS}")
    if base not in NAMED_LOSS_WEIGHTS:
        raise ValueError(f"loss weights {base!r} are not a named set; use one of {sorted(NAMED_LOSS_WEIGHTS)}")
    out = {}
    for key, (value, spec) in NAMED_LOSS_WEIGHTS[base].items():
        schedule = parse_weight_schedule(schedules.get(key, spec))
        out[key] = lambda epoch, _v=values.get(key, value), _s=schedule: _v * _s(epoch)
    return out


def resolve_loss_weights(loss_weights) -> dict[str, Callable[[int], float]]:
    """``"recipe"`` / ``"paper"`` / None (= recipe), or a mapping over the recipe whose values are
    callables of the 1-based epoch, numbers (constant), or ``(value, "schedule spec")`` pairs."""
    if loss_weights is None or isinstance(loss_weights, str):
        return loss_weight_schedules(base=loss_weights or "recipe")
    if not isinstance(loss_weights, Mapping):
        raise ValueError(f"loss_weights must be 'recipe', 'paper' or a mapping, got {type(loss_weights).__name__}")
    unknown = set(loss_weights) - set(LOSS_WEIGHTS)
    if unknown:
        raise ValueError(f"unknown loss weights {sorted(unknown)}; known: {LOSS_WEIGHTS}")
    out = loss_weight_schedules(base="recipe")
    for key, given in loss_weights.items():
        if callable(given):
            out[key] = given
        elif isinstance(given, (int, float)) and not isinstance(given, bool):
            out[key] = lambda epoch, _v=float(given): _v
        elif isinstance(given, (tuple, list)) and len(given) == 2:
            out[key] = loss_weight_schedules({key: float(given[0])}, {key: given[1]})[key]
        else:
            raise ValueError(f"loss weight {key!r}: give a number, a (value, 'schedule') pair or a callable of the "
                             f"epoch, got {given!r}")
    return out


def _stage_list(decoded) -> list:
    """A decoder's outputs as a list (Keras returns a lone tensor for a 2-stage backbone's one map)."""
    return list(decoded) if isinstance(decoded, (list, tuple)) else [decoded]


def _clone_optimizer(template: keras.optimizers.Optimizer, role: str) -> keras.optimizers.Optimizer:
    """A new optimizer of ``template``'s class and settings for ``role`` (its own slots and step count)."""
    config = template.get_config()
    config["name"] = f"{role}_{config.get('name') or 'optimizer'}"
    return template.__class__.from_config(config)


class _FollowLossWeightSchedules(keras.callbacks.Callback):
    """FFSD.fit's own epoch hook: every scheduled loss weight for the epoch about to start."""

    def on_epoch_begin(self, epoch, logs=None):
        self.model.set_epoch(epoch + 1)  # Keras counts from 0, the paper's schedules from 1


@dataclasses.dataclass(frozen=True)
class FFSDConfig:
    """What the cohort is made of. The ablations of the paper are switches here, not copies.

    * ``leader=False``: no leader, fusion or leader decoder (plain DML; with
      ``mutual_learning=False`` too, n independent CE-only baselines).
    * ``fusion=False``: the leader learns CE + T^2 KL from the students' mean logits z_e (the
      paper's "DML + leader", Table V), without Eq. 5 or Eq. 13.
    * ``diversity``: "attention" (Eqs. 8-9, 11), "l2" (Eq. 6 over the M maps), "none" (DML).
    * ``self_distillation``: which decoders exist: "both", "students", "leader" or "none"
      (Table VI). Student decoders need attention diversity and n >= 2; the leader's needs fusion.
    * ``teacher``: the backbone of a fixed, trained teacher distilled offline into every common
      student (``teacher_loss``: "kd", "at" or "kd_at"); needs ``leader=False``. Its weights
      come from another run (``rundir.load_teacher``) and are checkpointed with this run.
    * ``leader_kl_mask``: "none" (the paper: Eq. 14's KL on every sample) or "teacher_correct"
      (not in the paper: the leader's KL only on the samples its teacher classifies correctly,
      so a wrong teacher never pulls against the label; the other samples add 0, the mean stays
      over the whole batch).
    * ``ema_decay`` (not in the paper): > 0 keeps an exponential moving average of every
      classifier's weights (common students, fusion module, leader; ``ffsd_tf.averaging``, decay
      per step, warmed up), evaluated beside it as ``<name>_ema``; 0 (the paper): none.
    * ``ema_teacher`` (not in the paper; needs ``ema_decay`` > 0 and a leader): the leader's teacher
      in Eq. 14 (and its KL mask) is the averaged cohort, the averaged fusion classifier on the
      averaged students' features (their mean logits without fusion), not the live one.
    """

    model: str = "resnet32"
    num_classes: int = 100
    input_shape: tuple = (32, 32, 3)
    num_students: int = 2
    temperature: float = 2.0
    mutual_learning: bool = True
    leader: bool = True
    fusion: bool = True
    diversity: str = "attention"
    self_distillation: str = "both"
    sync_batchnorm: bool = False
    teacher: str | None = None
    teacher_loss: str = "kd"
    leader_kl_mask: str = "none"
    ema_decay: float = 0.0
    ema_teacher: bool = False

    def __post_init__(self):
        if self.num_students < 1:
            raise ValueError(f"num_students must be >= 1, got {self.num_students}")
        if self.diversity not in DIVERSITY_MODES:
            raise ValueError(f"diversity must be one of {DIVERSITY_MODES}, got {self.diversity!r}")
        if self.self_distillation not in SD_MODES:
            raise ValueError(f"self_distillation must be one of {SD_MODES}, got {self.self_distillation!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.fusion and not self.leader:
            object.__setattr__(self, "fusion", False)
        if self.teacher_loss not in TEACHER_LOSSES:
            raise ValueError(f"teacher_loss must be one of {TEACHER_LOSSES}, got {self.teacher_loss!r}")
        if self.leader_kl_mask not in LEADER_KL_MASKS:
            raise ValueError(f"leader_kl_mask must be one of {LEADER_KL_MASKS}, got {self.leader_kl_mask!r}")
        if self.leader_kl_mask != "none" and not self.leader:
            raise ValueError("leader_kl_mask masks the leader's KL: it needs leader=True, or leader_kl_mask=none")
        if self.teacher is not None and self.leader:
            raise ValueError("an offline teacher is distilled into the common students only; use leader=False")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0: no weight averages; e.g. 0.995), got {self.ema_decay}")
        if self.ema_teacher and not self.leader:
            raise ValueError("ema_teacher is the leader's teacher: it needs leader=True, or ema_teacher=False")
        if self.ema_teacher and self.ema_decay == 0.0:
            raise ValueError("ema_teacher distils the averaged cohort into the leader: it needs ema_decay > 0 "
                             "(e.g. 0.995)")

    @property
    def student_decoders(self) -> bool:
        return (
            self.diversity == "attention"
            and self.self_distillation in ("both", "students")
            and self.num_students >= 2
        )

    @property
    def leader_decoder(self) -> bool:
        return self.leader and self.fusion and self.self_distillation in ("both", "leader")


def student_name(i: int) -> str:
    """Paper numbering: common students are S_1..S_n."""
    return f"student{i + 1}"


class FFSD(KerasPrivateOverrides, keras.Model):
    """Online distillation of a cohort into a leader by Feature Fusion and Self-Distillation."""

    def __init__(self, config: FFSDConfig | str | keras.Model = "resnet32", loss_weights="recipe", *,
                 name: str = "ffsd", **options):
        """``config``: an ``FFSDConfig``; or a registered network's name (``"resnet20"``); or your own
        backbone, a functional ``keras.Model`` returning ``{"logits", "features"}`` (see
        ``ffsd_tf.networks.custom``; its input shape and class count are read off it). ``options``:
        any ``FFSDConfig`` field (``num_classes``, ``input_shape``, ``num_students``...).
        ``loss_weights``: ``"recipe"`` (default), ``"paper"``, ``"kl_warmup"``, or a mapping over the recipe (name ->
        number, ``(value, "schedule")`` or callable of the 1-based epoch; see ``LOSS_WEIGHTS``).
        With the recipe (or a mapping over it) and a name or backbone, the recipe's cohort options
        (``RECIPE_OPTIONS``: the leader's teacher-correct KL mask) are the defaults of ``options``;
        pass ``leader_kl_mask="none"`` for the paper's Eq. 14. An ``FFSDConfig`` is taken as written.
        A backbone the cohort cannot use is a one-line ``ValueError`` here.
        """
        bad = set(options) - {f.name for f in dataclasses.fields(FFSDConfig)}
        if bad:
            raise ValueError(f"unknown FFSD options {sorted(bad)}; known: the fields of FFSDConfig")
        if not isinstance(config, FFSDConfig):
            options = recipe_options(loss_weights, options)
        self._network_factory = None
        if isinstance(config, keras.Model):
            backbone = custom.as_backbone(config)
            options = {"num_classes": int(backbone.output["logits"].shape[-1]),
                       "input_shape": tuple(backbone.input_shape[1:]), **options}
            self._network_factory = lambda net_name, _b=backbone: custom.clone_backbone(_b, net_name)
            config = FFSDConfig(model=backbone.name, **options)
            custom.check_backbone(backbone, num_classes=config.num_classes, input_shape=config.input_shape,
                                  decoders=config.student_decoders or config.leader_decoder)
        elif isinstance(config, str):
            config = FFSDConfig(model=config, **options)
        elif isinstance(config, FFSDConfig):
            config = dataclasses.replace(config, **options) if options else config
        else:
            raise ValueError(f"FFSD takes an FFSDConfig, a network name or a keras.Model, got {type(config).__name__}")
        super().__init__(name=name)
        self.config = config
        with synchronized_batchnorm(config.sync_batchnorm):
            self._build_cohort(config)
        self._loss_weight_schedules = resolve_loss_weights(loss_weights)
        self.loss_weight_vars = {
            key: self.add_weight(name=f"w_{key}", shape=(), initializer="ones", trainable=False)
            for key in LOSS_WEIGHTS
        }
        self.epoch = self.add_weight(name="epoch", shape=(), initializer="zeros", dtype="int64", trainable=False)
        # Updates of the weight averages made so far (t of ffsd_tf.averaging; checkpointed with them).
        self.ema_updates = self.add_weight(name="ema_updates", shape=(), initializer="zeros", dtype="int64",
                                           trainable=False)
        self._train_trackers, self._eval_trackers = self._make_trackers()

    def _build_cohort(self, config: FFSDConfig):
        def build(name, backbone=None):
            if backbone is None and self._network_factory is not None:
                return self._network_factory(name)
            return build_network(backbone or config.model, num_classes=config.num_classes,
                                 input_shape=config.input_shape, model_name=name)

        first = build(student_name(0))
        if self._network_factory is None:  # a registered network: the same checks (yours were checked already)
            custom.check_backbone(first, num_classes=config.num_classes, input_shape=config.input_shape,
                                  decoders=config.student_decoders or config.leader_decoder, label=config.model)
        self.common_students = [first] + [build(student_name(i)) for i in range(1, config.num_students)]
        feature_shapes = [tuple(f.shape[1:]) for f in self.common_students[0].output["features"]]
        self.feature_shapes = feature_shapes
        self.leader = build("leader") if config.leader else None
        self.trans_fusion = None
        self.fusion = None
        if config.fusion:
            self.fusion = build_fusion_module(feature_shapes[-1], config.num_students, config.num_classes)
            self.trans_fusion = build_trans_fusion(feature_shapes[-1], config.num_students)
        self.sd_decoders = {}
        if config.student_decoders:
            for i in range(1, config.num_students):
                self.sd_decoders[student_name(i)] = build_sd_decoder(feature_shapes, name=f"sd_{student_name(i)}")
        if config.leader_decoder:
            self.sd_decoders["leader"] = build_sd_decoder(feature_shapes, name="sd_leader")
        self.teacher = None
        if config.teacher is not None:
            self.teacher = build("teacher", config.teacher)
            self.teacher.trainable = False
            teacher_shapes = [tuple(f.shape[1:3]) for f in self.teacher.output["features"]]
            student_shapes = [s[:2] for s in feature_shapes]
            if "at" in config.teacher_loss.split("_") and teacher_shapes != student_shapes:
                raise ValueError(
                    f"attention transfer needs the teacher's feature maps at the students' sizes: teacher "
                    f"{config.teacher} has {teacher_shapes}, {config.model} has {student_shapes}; distil by KD only "
                    "(teacher_loss kd)"
                )
        # Weight averages (ffsd_tf.averaging): a copy of every classifier, trained by no optimizer,
        # started at its network's initial weights.
        self.averages: dict[str, keras.Model] = {}
        self._average_pairs = []
        if config.ema_decay > 0:
            live = {student_name(i): s for i, s in enumerate(self.common_students)}
            if self.fusion is not None:
                live["fusion"] = self.fusion
            if self.leader is not None:
                live["leader"] = self.leader
            for name, net in live.items():
                if name == "fusion":
                    copy = build_fusion_module(feature_shapes[-1], config.num_students, config.num_classes,
                                               name="fusion_ema")
                else:
                    copy = build(f"{name}_ema")
                copy.trainable = False
                self.averages[name] = copy
                self._average_pairs += averaging.weight_pairs(copy, net)
            averaging.copy_weights(self._average_pairs)

    # ------------------------------------------------------------------ structure
    @property
    def role_models(self) -> dict[str, list[keras.Model]]:
        """The networks each optimizer owns (roles that are absent map to [])."""
        return {
            "students": list(self.common_students),
            "leader": [m for m in (self.leader, self.trans_fusion) if m is not None],
            "fusion": [self.fusion] if self.fusion is not None else [],
            "decoders": list(self.sd_decoders.values()),
        }

    @property
    def networks(self) -> dict[str, keras.Model]:
        """Every network by name: student1..n, leader, trans_fusion, fusion, sd_<owner>, teacher."""
        nets = {m.name: m for ms in self.role_models.values() for m in ms}
        if self.teacher is not None:
            nets["teacher"] = self.teacher
        return nets

    def role_variables(self, role: str) -> list:
        return [v for m in self.role_models[role] for v in m.trainable_variables]

    @property
    def _config_fields(self) -> dict:
        """The config as the dict ``loss_terms`` reads a cohort's terms from."""
        return dataclasses.asdict(self.config)

    @property
    def active_loss_weights(self) -> list[str]:
        """The loss weights some term of this cohort uses (logged per epoch as ``weights/<name>``)."""
        return loss_terms.active_loss_weights(self._config_fields)

    @property
    def active_roles(self) -> list[str]:
        return [r for r in ROLES if self.role_models[r]]

    @property
    def averaged_networks(self) -> dict[str, keras.Model]:
        """The weight averages by name (``<network>_ema``; empty with ``ema_decay=0``)."""
        return {m.name: m for m in self.averages.values()}

    def deployable_leader(self, average: bool = False) -> keras.Model:
        """The model to ship: the leader backbone mapping images to logits (no sigma, no decoder).

        With ``leader=False`` (DML / baseline runs) the first common student is returned; with
        ``average=True`` its weight average (``ema_decay`` > 0). Logits are float32 whatever the
        training precision.
        """
        net = self.leader if self.leader is not None else self.common_students[0]
        if average:
            key = "leader" if self.leader is not None else student_name(0)
            if key not in self.averages:
                raise ValueError("this cohort keeps no weight averages (ema_decay=0): export the network itself")
            average_net = self.averages[key]
            net = keras.models.clone_model(average_net)  # trainable again, the cohort's copy untouched
            net.set_weights(average_net.get_weights())
        logits = net.output["logits"]
        if logits.dtype != "float32":
            logits = keras.layers.Activation("linear", dtype="float32", name="logits_float32")(logits)
        return keras.Model(net.input, logits, name="leader" if self.leader is not None else net.name)

    def call(self, images, training=False):
        """Inference: the deployed model's logits."""
        net = self.leader if self.leader is not None else self.common_students[0]
        return net(images, training=training)["logits"]

    # ------------------------------------------------------------------ weights
    def set_epoch(self, epoch: int) -> dict[str, float]:
        """Sets every scheduled loss weight for the 1-based ``epoch``; returns their values."""
        values = {}
        for key, var in self.loss_weight_vars.items():
            values[key] = float(self._loss_weight_schedules[key](epoch))
            var.assign(values[key])
        self.epoch.assign(epoch)
        return values

    # ------------------------------------------------------------------ compile
    def compile(self, optimizer=None, **kwargs):
        """One optimizer per active role (see the module docstring), from ``optimizer``:

        * ``None``: the paper's (``optimizers.paper_optimizers``: SGD nesterov 0.1 with coupled L2
          for students, leader and fusion, Adam 1e-3 for the decoders), at a constant learning
          rate; pass ``paper_optimizers(..., milestones=..., steps_per_epoch=...)`` for its steps;
        * one optimizer (an instance or a name such as ``"sgd"``): cloned for every role, each
          with its own slots;
        * a mapping role -> optimizer (``model.active_roles`` are the keys it needs).

        Under the ``mixed_float16`` policy every role's optimizer gets its own loss scaling.
        Other keyword arguments go to ``keras.Model.compile`` (``jit_compile``...).
        """
        from ffsd_tf.distribute import wrap_for_precision
        from ffsd_tf.optimizers import paper_optimizers

        if kwargs.get("loss") is not None:
            raise ValueError("FFSD computes its own losses (Eqs. 2-14); compile it without loss=")
        if optimizer is None:
            optimizers = paper_optimizers(self.active_roles)
        elif isinstance(optimizer, Mapping):
            optimizers = dict(optimizer)
        else:
            template = keras.optimizers.get(optimizer)
            optimizers = {role: _clone_optimizer(template, role) for role in self.active_roles}
        missing = [r for r in self.active_roles if r not in optimizers]
        extra = [r for r in optimizers if r not in self.active_roles]
        if missing or extra:
            raise ValueError(f"optimizers needed for roles {self.active_roles}; missing {missing}, unused {extra}")
        if optimizer is None or not isinstance(optimizer, Mapping):
            policy = keras.config.dtype_policy().name
            if not any(isinstance(o, keras.optimizers.LossScaleOptimizer) for o in optimizers.values()):
                optimizers = wrap_for_precision(optimizers, policy)
        super().compile(optimizer=optimizers["students"], **kwargs)
        self.leader_optimizer = optimizers.get("leader")
        self.fusion_optimizer = optimizers.get("fusion")
        self.decoder_optimizer = optimizers.get("decoders")
        self.build_optimizers()

    def fit(self, *args, callbacks=None, verbose="auto", **kwargs):
        """``keras.Model.fit`` with every loss weight on its schedule: at the start of each epoch
        (``initial_epoch`` included) the weights for that 1-based epoch are set, no callback needed.

        ``verbose="auto"`` (default): the CLI's compact progress (a bar on a terminal, one line per
        epoch in logs and captured output) and its blow-up warning (``progress.CollapseWarning``);
        ``verbose=0/1/2``: Keras' own progress bar, nothing added.
        """
        callbacks = [_FollowLossWeightSchedules(), *(callbacks or [])]
        if args and isinstance(args[0], tf.data.Dataset) or isinstance(kwargs.get("x"), tf.data.Dataset):
            kwargs.setdefault("shuffle", False)  # a dataset is shuffled by its pipeline (Keras would warn)
        if verbose == "auto":
            from ffsd_tf.progress import CollapseWarning, CompactProgress

            callbacks += [CollapseWarning(), CompactProgress(mode="auto")]
            verbose = 0
        return super().fit(*args, callbacks=callbacks, verbose=verbose, **kwargs)

    @property
    def optimizers(self) -> dict[str, keras.optimizers.Optimizer]:
        found = {
            "students": self.optimizer,
            "leader": self.leader_optimizer,
            "fusion": self.fusion_optimizer,
            "decoders": self.decoder_optimizer,
        }
        return {r: o for r, o in found.items() if o is not None}

    def build_optimizers(self):
        """Creates every optimizer's slots now, so a checkpoint restore finds them."""
        for role, opt in self.optimizers.items():
            if not opt.built:
                opt.build(self.role_variables(role))

    # ------------------------------------------------------------------ metrics
    def _make_trackers(self):
        """Training metrics: every model's loss and terms (``loss_terms.metric_names``) and
        accuracy; evaluation: accuracy and CE of every model with a classifier."""
        c, fields = self.config, self._config_fields
        train = loss_terms.metric_names(fields)
        evaluation = []
        for name in [name for name, kind, _ in loss_terms.models(fields) if kind != "decoder"]:  # the classifiers
            train.insert(train.index(f"{name}/loss") + 1, f"{name}/acc")
            evaluation += [f"{name}/acc", f"{name}/loss"]
        if c.teacher is not None:
            evaluation += ["teacher/acc", "teacher/loss"]
        if c.num_students > 1:
            evaluation += ["students_mean/acc", "ensemble/acc", "ens_any/acc"]
        for name in self.averages:  # the weight averages, evaluated beside their networks
            evaluation += [f"{name}_ema/acc", f"{name}_ema/loss"]
        if c.ema_teacher:  # on the training batches: the samples the leader's KL mask keeps
            train.insert(train.index("leader/acc") + 1, "ema_teacher/acc")
        train.append("loss")
        evaluation.append("loss")
        return {n: keras.metrics.Mean(name=n) for n in train}, {n: keras.metrics.Mean(name=n) for n in evaluation}

    @property
    def _teacher_terms(self) -> list[str]:
        """The offline-teacher terms in use: "kd" and/or "at"."""
        return self.config.teacher_loss.split("_") if self.config.teacher is not None else []

    @property
    def metrics(self):
        return list(self._train_trackers.values()) + list(self._eval_trackers.values())

    # ------------------------------------------------------------------ training
    def compute_losses(self, images, labels, training: bool = True):
        """One forward pass of the cohort; returns ``(per_role_loss, terms, logits)``.

        Each model's unweighted terms are computed here; its loss is their weighted sum as the
        table ``loss_terms.LOSS_TERMS`` says (``model_loss``). ``per_role_loss[role]`` sums the
        losses whose gradient belongs to that role; ``terms`` maps metric names to values:
        ``<model>/<term>`` unweighted (``student2/diversity``...) and ``<model>/loss`` weighted.
        """
        c = self.config
        t = c.temperature
        raw: dict[str, dict[str, tf.Tensor]] = {}  # model name -> its unweighted terms
        logits: dict[str, tf.Tensor] = {}

        outs = [s(images, training=training) for s in self.common_students]
        z = [o["logits"] for o in outs]
        dtype = loss_float(z[0]).dtype  # float32, or float64 for a float64 cohort (the parity harness)
        w = {k: tf.cast(v, dtype) for k, v in self.loss_weight_vars.items()}
        feats = [o["features"] for o in outs]
        if self.teacher is not None:  # fixed: inference mode, no gradient
            teacher_out = self.teacher(images, training=False)
            z_teacher = tf.stop_gradient(teacher_out["logits"])
            f_teacher = [tf.stop_gradient(f) for f in teacher_out["features"]]

        # Common students (Eqs. 2, 9, 11, 12).
        for i in range(c.num_students):
            s = student_name(i)
            logits[s] = z[i]
            own = raw[s] = {"ce": losses.cross_entropy(z[i], labels)}
            if c.mutual_learning and c.num_students > 1:
                kl = tf.add_n([losses.distillation_kl(z[i], z[j], t) for j in range(c.num_students) if j != i])
                own["kl"] = kl / float(c.num_students - 1)
            if i >= 1 and c.diversity == "attention":
                own["diversity"] = losses.diversity_loss(feats[i][-1], feats[i - 1][-1])
                if c.student_decoders:
                    target_input = tf.stop_gradient(diversity_feature_target(feats[i - 1][-1]))
                    decoded = _stage_list(self.sd_decoders[s](target_input, training=False))
                    own["sd_diversity"] = losses.sd_target_loss(feats[i][:-1], decoded)
            elif c.diversity == "l2" and c.num_students > 1:
                # Eq. (6) sums over ordered pairs: every student pushes away from every peer.
                own["diversity"] = tf.add_n(
                    [losses.l2_diversity_loss(feats[i], feats[j]) for j in range(c.num_students) if j != i]
                )
            if "kd" in self._teacher_terms:
                own["teacher_kd"] = losses.distillation_kl(z[i], z_teacher, t)
            if "at" in self._teacher_terms:
                own["teacher_at"] = losses.attention_transfer_loss(feats[i], f_teacher)

        z_ensemble = tf.stop_gradient(tf.add_n([loss_float(v) for v in z]) / float(c.num_students))

        # Fusion module and classifier (Eq. 4).
        if c.fusion:
            f_e = tf.stop_gradient(tf.concat([f[-1] for f in feats], axis=-1))
            fo = self.fusion(f_e, training=training)
            z_f, f_fused = fo["logits"], fo["fused"]
            logits["fusion"] = z_f
            raw["fusion"] = {"ce": losses.cross_entropy(z_f, labels), "kl": losses.distillation_kl(z_f, z_ensemble, t)}

        # Leader (Eqs. 5, 13, 14).
        if c.leader:
            lo = self.leader(images, training=training)
            z_0, f_0 = lo["logits"], lo["features"]
            logits["leader"] = z_0
            if c.ema_teacher:
                z_teach = logits["ema_teacher"] = self._averaged_teacher_logits(images)
            else:
                z_teach = z_f if c.fusion else z_ensemble
            mask = losses.teacher_correct(z_teach, labels) if c.leader_kl_mask == "teacher_correct" else None
            own = raw["leader"] = {
                "ce": losses.cross_entropy(z_0, labels),
                "kl": losses.distillation_kl(z_0, z_teach, t, sample_mask=mask),
            }
            if c.fusion:
                own["fusion_feature"] = losses.attention_loss(f_0[-1], tf.stop_gradient(f_fused))
                own["fusion_sigma"] = losses.attention_loss(self.trans_fusion(f_0[-1], training=training), f_e)
                if c.leader_decoder:
                    decoded = _stage_list(self.sd_decoders["leader"](tf.stop_gradient(f_fused), training=False))
                    own["sd"] = losses.sd_target_loss(f_0[:-1], decoded)

        # Decoders' own training (Eq. 10), after they were applied in inference mode above.
        for owner, decoder in self.sd_decoders.items():
            maps = f_0 if owner == "leader" else feats[int(owner[len("student"):]) - 1]
            decoded = _stage_list(decoder(tf.stop_gradient(maps[-1]), training=training))
            raw[f"sd_{owner}"] = {"sd": losses.decoder_loss(decoded, [tf.stop_gradient(f) for f in maps[:-1]])}

        # Each model's loss: its terms weighted as the table says, routed to its role's optimizer.
        terms: dict[str, tf.Tensor] = {}
        role_loss = {r: [] for r in ROLES}
        fields = self._config_fields
        for name, kind, index in loss_terms.models(fields):
            total = loss_terms.model_loss(raw[name], w, loss_terms.terms_of(fields, kind, index), name)
            terms[f"{name}/loss"] = total
            terms.update({f"{name}/{k}": v for k, v in raw[name].items()})
            role_loss[loss_terms.ROLE_OF[kind]].append(total)
        per_role = {r: tf.add_n(v) for r, v in role_loss.items() if v}
        return per_role, terms, logits

    def train_step(self, data):
        images, labels = data[0], data[1]
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        roles = self.active_roles
        variables = {r: self.role_variables(r) for r in roles}
        with tf.GradientTape() as tape:
            per_role, terms, logits = self.compute_losses(images, labels, training=True)
            total = tf.add_n([per_role[r] for r in roles])
            # Each role's loss reaches only its own variables, so each may carry its own optimizer's
            # loss scale (mixed precision) inside one backward pass. Hand-written means are per
            # replica: dividing by the replica count makes the cross-replica sum the global mean.
            scaled = tf.add_n([self.optimizers[r].scale_loss(per_role[r]) for r in roles]) / float(replicas)
        flat_vars = [v for r in roles for v in variables[r]]
        grads = tape.gradient(scaled, flat_vars)
        offset = 0
        for r in roles:
            n = len(variables[r])
            self.optimizers[r].apply_gradients(zip(grads[offset : offset + n], variables[r]))
            offset += n
        if self._average_pairs:  # after the step: every average follows its network's new weights
            averaging.update(self._average_pairs, averaging.decay_at(self.ema_updates, self.config.ema_decay))
            self.ema_updates.assign_add(1)
        terms["loss"] = total
        logs = self._update_trackers(self._train_trackers, terms, logits, labels)
        logs.update({f"weights/{k}": tf.convert_to_tensor(self.loss_weight_vars[k]) for k in self.active_loss_weights})
        return self._step_logs(logs)

    def eval_logits(self, images) -> dict[str, tf.Tensor]:
        """Inference-mode logits of every trained classifier: each common student, the fusion
        classifier (on the students' F^L) and the leader, by name (weight averages: ``averaged_logits``)."""
        outs = {student_name(i): s(images, training=False) for i, s in enumerate(self.common_students)}
        logits = {k: v["logits"] for k, v in outs.items()}
        if self.config.fusion:
            f_e = tf.concat([o["features"][-1] for o in outs.values()], axis=-1)
            logits["fusion"] = self.fusion(f_e, training=False)["logits"]
        if self.leader is not None:
            logits["leader"] = self.leader(images, training=False)["logits"]
        return logits

    def test_step(self, data):
        images, labels = data[0], data[1]
        logits = self.eval_logits(images)
        terms = {f"{k}/loss": losses.cross_entropy(v, labels) for k, v in logits.items()}
        terms["loss"] = tf.add_n(list(terms.values()))  # the trained models' CE sum
        if self.teacher is not None:
            logits["teacher"] = self.teacher(images, training=False)["logits"]
            terms["teacher/loss"] = losses.cross_entropy(logits["teacher"], labels)
        if self.averages:  # outside "loss" (the trained models' CE sum)
            averaged = self.averaged_logits(images)
            terms.update({f"{k}/loss": losses.cross_entropy(v, labels) for k, v in averaged.items()})
            logits.update(averaged)
        return self._step_logs(self._update_trackers(self._eval_trackers, terms, logits, labels))

    def averaged_logits(self, images, leader: bool = True) -> dict[str, tf.Tensor]:
        """Every weight average's logits in inference mode: ``<name>_ema`` -> logits (the averaged
        fusion classifier on the averaged students' F^L; ``leader=False``: without the leader's)."""
        out, feats = {}, []
        for i in range(self.config.num_students):
            o = self.averages[student_name(i)](images, training=False)
            out[f"{student_name(i)}_ema"] = o["logits"]
            feats.append(o["features"][-1])
        if "fusion" in self.averages:
            out["fusion_ema"] = self.averages["fusion"](tf.concat(feats, axis=-1), training=False)["logits"]
        if leader and "leader" in self.averages:
            out["leader_ema"] = self.averages["leader"](images, training=False)["logits"]
        return out

    def _averaged_teacher_logits(self, images) -> tf.Tensor:
        """``ema_teacher``: the leader's Eq. 14 teacher, the averaged fusion classifier's logits
        (without fusion, the averaged students' mean logits); no gradient."""
        z = self.averaged_logits(images, leader=False)
        if self.config.fusion:
            return tf.stop_gradient(loss_float(z["fusion_ema"]))
        n = self.config.num_students
        return tf.stop_gradient(tf.add_n([loss_float(z[f"{student_name(i)}_ema"]) for i in range(n)]) / float(n))

    def _update_trackers(self, trackers, terms, logits, labels):
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int64)
        correct = {k: tf.cast(tf.equal(tf.argmax(v, axis=-1), labels), tf.float32) for k, v in logits.items()}
        for k, c in correct.items():
            trackers[f"{k}/acc"].update_state(c)
        student_keys = [student_name(i) for i in range(self.config.num_students)]
        if "students_mean/acc" in trackers:
            trackers["students_mean/acc"].update_state(tf.add_n([correct[k] for k in student_keys]) / len(student_keys))
            probs = tf.add_n([tf.nn.softmax(tf.cast(logits[k], tf.float32)) for k in student_keys])
            trackers["ensemble/acc"].update_state(tf.cast(tf.equal(tf.argmax(probs, -1), labels), tf.float32))
            trackers["ens_any/acc"].update_state(tf.reduce_max(tf.stack([correct[k] for k in student_keys]), axis=0))
        for k, v in terms.items():
            if k in trackers:
                trackers[k].update_state(v)
        return {k: m.result() for k, m in trackers.items()}

