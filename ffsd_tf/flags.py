"""Every command-line flag of ``python -m ffsd_tf.run``, typed, documented and validated.

Defaults are the authors' CIFAR-100 settings (SJLeo/FFSD ``options.py``), so a flagfile only
states what differs. ``validate()`` checks combinations that one flag's type cannot, and raises
``FlagError`` with one line naming the problem and the fix.
"""

from __future__ import annotations

import math
import os
import sys

from absl import flags

from ffsd_tf.data import DATASETS
from ffsd_tf.distribute import PRECISIONS, STRATEGIES
from ffsd_tf.networks import available as available_networks
from ffsd_tf.trainer import DIVERSITY_MODES, LOSS_WEIGHTS, PAPER_LOSS_WEIGHTS, SD_MODES, TEACHER_LOSSES, loss_weight_schedules

FLAGS = flags.FLAGS


class FlagError(ValueError):
    """A flag value or combination that cannot run; the message is one actionable line."""


# Data ----------------------------------------------------------------------------------------
flags.DEFINE_enum("dataset", "cifar100", sorted(DATASETS), "Dataset to train on.")
flags.DEFINE_string("data_dir", None, "Where the dataset lives (tfds data_dir, an .npz file/folder, an IDX folder, "
                    "or for --dataset=folder a folder with one subfolder of images per class).")
flags.DEFINE_integer("image_size", None, "Resize images to this square size (--dataset=folder: default 32).",
                     lower_bound=8)
flags.DEFINE_float("validation_split", None, "--dataset=folder without val/ or test/: the fraction of each class held "
                   "out for evaluation (stratified, fixed: it does not change with --seed).")
flags.DEFINE_integer("train_subset", None, "Use only this many training images (seeded subset).", lower_bound=1)
flags.DEFINE_integer("test_subset", None, "Use only this many test images (seeded subset).", lower_bound=1)
flags.DEFINE_enum("partial_batch", "drop_small", ["drop_small", "keep", "drop"],
                  "A last, partial training batch: drop_small = drop it if under half a batch (a different tail "
                  "each epoch); keep = train on it (the authors' loader, drop_last=False); drop = never train on it.")
flags.DEFINE_integer("synthetic_classes", 10, "Classes of the synthetic dataset.", lower_bound=2)
flags.DEFINE_integer("synthetic_train", 512, "Training images of the synthetic dataset.", lower_bound=1)
flags.DEFINE_integer("synthetic_test", 256, "Test images of the synthetic dataset.", lower_bound=1)

# Cohort --------------------------------------------------------------------------------------
flags.DEFINE_string("model", "resnet32", "Backbone of every student and the leader (see networks/).")
flags.DEFINE_integer("num_students", 2, "Number of common students n (the leader is extra).")
flags.DEFINE_bool("mutual_learning", True, "KL between common students (Eq. 2). Off + --noleader = CE baseline.")
flags.DEFINE_bool("leader", True, "Train a leader (S_0). Off = plain DML among the students.")
flags.DEFINE_bool("fusion", True, "Fusion module (Eqs. 4-5). Off = the leader distils the students' mean logits.")
flags.DEFINE_enum("diversity", "attention", DIVERSITY_MODES, "Diversity: attention (Eqs. 8-11), l2 (Eq. 6), none.")
flags.DEFINE_enum("self_distillation", "both", SD_MODES, "Which self-distillation decoders to train (Table VI).")
flags.DEFINE_float("temperature", 2.0, "Distillation temperature T.")
flags.DEFINE_string("teacher_run", None, "Run directory of a trained network to distil offline into the common students "
                    "(Table II's KD / AT; needs --noleader): its leader, or its student1 if it had none.")
flags.DEFINE_enum("teacher_loss", "kd", TEACHER_LOSSES, "With --teacher_run: kd (Hinton), at (attention transfer) or kd_at.")

# Loss weights: value * schedule(epoch) -------------------------------------------------------
_WEIGHT_HELP = {
    "kl": "T^2 KL between common students (Eq. 2)",
    "fusion_kl": "T^2 KL of the fusion classifier to the students' mean (Eq. 4)",
    "leader_kl": "T^2 KL of the leader to the fusion classifier (Eq. 14)",
    "diversity": "lambda_div: diversity and its self-distillation (Eqs. 9, 11)",
    "fusion": "lambda_fea: leader feature terms, Eq. 5 and (as coded) Eq. 13",
    "self_distillation": "lambda_sd: the decoders' own loss (Eq. 10)",
    "teacher_kd": "T^2 KL of each common student to the --teacher_run network (KD)",
    "teacher_at": "attention transfer from the --teacher_run network (AT: beta/2)",
}
for _key, (_value, _schedule) in PAPER_LOSS_WEIGHTS.items():
    flags.DEFINE_float(f"lambda_{_key}", _value, f"Weight of the {_WEIGHT_HELP[_key]}.")
    flags.DEFINE_string(
        f"lambda_{_key}_schedule", _schedule, "Its schedule of the epoch: constant | exp_warmup:E | linear_warmup:E | piecewise:E=V,..."
    )

# Optimisation --------------------------------------------------------------------------------
flags.DEFINE_integer("batch_size", 128, "Global training batch size.")
flags.DEFINE_integer("eval_batch_size", None, "Evaluation batch size (default: batch_size).")
flags.DEFINE_integer("epochs", 299, "Epochs (the authors' loop range(1, 300) runs 299).")
flags.DEFINE_integer("steps_per_epoch", None, "Override the steps per epoch (smoke runs); default: the whole train set.")
flags.DEFINE_float("lr", 0.1, "SGD learning rate of students, leader and fusion.")
flags.DEFINE_list("milestones", ["150", "225"], "Epochs after which every learning rate is multiplied by lr_gamma.")
flags.DEFINE_float("lr_gamma", 0.1, "Multi-step decay factor.")
flags.DEFINE_integer("lr_warmup_epochs", 0, "Linear per-iteration warm-up to lr over this many epochs (ImageNet: 5).")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_bool("nesterov", True, "Nesterov momentum.")
flags.DEFINE_float("weight_decay", 1e-4, "Coupled L2 (PyTorch style) of students and leader.")
flags.DEFINE_float("fusion_weight_decay", 1e-5, "Coupled L2 of the fusion module (the authors' code: 1e-5).")
flags.DEFINE_float("decoder_lr", 1e-3, "Adam learning rate of the self-distillation decoders.")
flags.DEFINE_float("decoder_weight_decay", 1e-4, "Coupled L2 of the decoders' Adam.")

# Run -----------------------------------------------------------------------------------------
flags.DEFINE_integer("seed", 0, "Seed of initialisation, data order and augmentation.")
flags.DEFINE_bool("deterministic", True, "Enable TensorFlow op determinism (repeatable CPU runs).")
flags.DEFINE_string("output_dir", "runs/default", "Run directory: flags, checkpoints, TensorBoard, results. "
                    "--output_dir=. read from a flagfile means that flagfile's folder (a run's flags.txt stores it).")
flags.DEFINE_bool("resume", True, "Continue from the last checkpoint in output_dir if there is one.")
flags.DEFINE_bool("force_resume", False, "Resume even when a flag that changes the result (seed, data, model, "
                  "optimisation, loss weights, schedules) differs from the run's stored one; the run continues "
                  "under the new values and records them.")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the train step (one device only; measure first: slower on CPU).")
flags.DEFINE_enum("strategy", "default", STRATEGIES, "default (one device), mirrored (local GPUs), multi_worker (TF_CONFIG).")
flags.DEFINE_bool("sync_batchnorm", False, "Synchronise BatchNorm statistics across replicas (multi-device = one device).")
flags.DEFINE_enum("precision", "float32", PRECISIONS, "Keras dtype policy; mixed_float16 uses a loss scale per optimizer.")
flags.DEFINE_integer("eval_every", 1, "Evaluate on the test set every this many epochs (and at the last).", lower_bound=1)
flags.DEFINE_integer("keep_checkpoints", 3, "How many epoch checkpoints to keep.", lower_bound=1)
flags.DEFINE_enum("verbose", "auto", ["auto", "bar", "line", "quiet"],
                  "Progress display: bar = redrawn per step, line = one line per epoch, auto = bar on a terminal, "
                  "line otherwise (CI, nohup, captured output).")
flags.DEFINE_bool("export", False, "Export the leader (SavedModel + TFLite) when training finishes.")
flags.DEFINE_string("export_dir", None, "Where to export (default: <output_dir>/export).")
flags.DEFINE_bool("reexport", False, "With --export: publish a new version even if export_dir already holds one of "
                  "the run's last checkpoint (a rerun of a finished --export command otherwise publishes nothing).")

# Flags that do not change what a run computes: they may differ when a run is resumed. Every
# other flag of this module does (seed, data, model, optimisation, loss weights and schedules,
# precision): resuming with another value is refused unless --force_resume. --epochs may change
# (grow to extend a run): the LR and loss-weight schedules depend on milestones and schedule
# flags, not on the number of epochs.
NEUTRAL_FLAGS = frozenset({
    "output_dir", "resume", "force_resume", "verbose", "eval_batch_size", "export", "export_dir",
    "keep_checkpoints", "eval_every", "epochs", "jit_compile", "strategy", "deterministic", "reexport",
})


def _module_flags():
    return FLAGS.get_flags_for_module(sys.modules[__name__])


def result_flags() -> dict[str, str]:
    """name -> ``--name=value`` line (``""`` when unset) of every flag that changes the result."""
    return {f.name: (f.serialize() if f.value is not None else "") for f in _module_flags()
            if f.name not in NEUTRAL_FLAGS}


def output_dir_source(argv) -> str | None:
    """The folder of the flagfile that set ``--output_dir`` last, or None when the command line did
    (or nothing did). absl expands flagfiles in order and the last value wins; so does this scan."""
    source = None

    def scan(args, origin, depth):
        nonlocal source
        i = 0
        while i < len(args):
            name, eq, value = args[i].partition("=")
            if name == "--":
                return
            if name.lstrip("-") == "flagfile" and name.startswith("-"):
                if not eq and i + 1 < len(args):
                    i += 1
                    value = args[i]
                try:
                    with open(value, encoding="utf-8") as f:
                        lines = [line.strip() for line in f.read().splitlines()]
                except (OSError, UnicodeDecodeError, ValueError):
                    lines = []  # absl reports it
                if depth < 20:
                    scan([line for line in lines if line and not line.startswith("#")],
                         os.path.dirname(os.path.abspath(value)), depth + 1)
            elif name.lstrip("-") == "output_dir" and name.startswith("-"):
                source = origin
            i += 1

    scan(list(argv[1:]), None, 0)
    return source


def resolve_output_dir(argv) -> None:
    """``--output_dir=.`` from a flagfile is that flagfile's folder: a run's ``flags.txt`` replays
    into the run directory it sits in, wherever that was copied."""
    source = output_dir_source(argv)
    if source is not None and os.path.normpath(FLAGS.output_dir) == ".":
        FLAGS.output_dir = source


def milestones() -> list[int]:
    try:
        return [int(m) for m in FLAGS.milestones]
    except ValueError:
        raise FlagError(f"--milestones must be integers, got {','.join(FLAGS.milestones)}") from None


def weight_schedules() -> dict:
    """Loss weight name -> callable(epoch) = lambda * schedule(epoch), from the flags."""
    try:
        return loss_weight_schedules(
            {k: getattr(FLAGS, f"lambda_{k}") for k in LOSS_WEIGHTS},
            {k: getattr(FLAGS, f"lambda_{k}_schedule") for k in LOSS_WEIGHTS},
        )
    except ValueError as e:
        raise FlagError(f"--lambda_*_schedule: {e}") from None


def validate(num_replicas: int = 1) -> None:
    """Raises FlagError for impossible values or combinations."""
    f = FLAGS
    for flag in _module_flags():
        if isinstance(flag.value, float) and not math.isfinite(flag.value):
            raise FlagError(f"--{flag.name} must be a finite number, got {flag.value}; pass a number such as "
                            f"{flag.default}")
    if f.model not in available_networks():
        raise FlagError(f"--model={f.model} is unknown; choose one of: {', '.join(available_networks())}")
    if f.num_students < 1:
        raise FlagError(f"--num_students must be >= 1, got {f.num_students}")
    for name in ("batch_size", "epochs"):
        if getattr(f, name) < 1:
            raise FlagError(f"--{name} must be >= 1, got {getattr(f, name)}")
    if f.eval_batch_size is not None and f.eval_batch_size < 1:
        raise FlagError(f"--eval_batch_size must be >= 1, got {f.eval_batch_size}")
    if f.steps_per_epoch is not None and f.steps_per_epoch < 1:
        raise FlagError(f"--steps_per_epoch must be >= 1, got {f.steps_per_epoch}")
    for name in ("lr", "decoder_lr", "temperature"):
        if getattr(f, name) <= 0:
            raise FlagError(f"--{name} must be > 0, got {getattr(f, name)}")
    for name in ("weight_decay", "fusion_weight_decay", "decoder_weight_decay", "momentum", "lr_warmup_epochs"):
        if getattr(f, name) < 0:
            raise FlagError(f"--{name} must be >= 0, got {getattr(f, name)}")
    if not 0 < f.lr_gamma <= 1:
        raise FlagError(f"--lr_gamma must be in (0, 1], got {f.lr_gamma}")
    for key in LOSS_WEIGHTS:
        if getattr(f, f"lambda_{key}") < 0:
            raise FlagError(f"--lambda_{key} must be >= 0, got {getattr(f, f'lambda_{key}')}")
    weight_schedules()
    ms = milestones()
    if any(b <= a for a, b in zip(ms, ms[1:])) or any(m < 1 for m in ms):
        raise FlagError(f"--milestones must be positive and increasing, got {ms}")
    if ms and ms[-1] >= f.epochs:
        raise FlagError(f"--milestones {ms} reach beyond --epochs={f.epochs}; drop them or train longer")
    if f.lr_warmup_epochs >= f.epochs and f.lr_warmup_epochs > 0:
        raise FlagError(f"--lr_warmup_epochs={f.lr_warmup_epochs} must be < --epochs={f.epochs}")
    if f.jit_compile and f.strategy != "default":
        raise FlagError(f"--jit_compile fails under --strategy={f.strategy} (XLA works on one device only); drop one of them")
    if f.batch_size % num_replicas:
        raise FlagError(f"--batch_size={f.batch_size} is not divisible by the {num_replicas} replicas; use a multiple")
    if not f.leader and f.self_distillation == "leader":
        raise FlagError("--self_distillation=leader needs a leader; drop --noleader or choose students/none")
    if f.teacher_run is not None and f.leader:
        raise FlagError("--teacher_run distils a fixed teacher into the common students only; add --noleader")
    if f.leader and not f.fusion and f.self_distillation == "leader":
        raise FlagError("--self_distillation=leader distils the fused map, which needs --fusion")
