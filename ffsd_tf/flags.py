"""Every command-line flag of ``python -m ffsd_tf.run``, typed and documented.

The flags map onto ``config.RunConfig`` (``run_config()``): one flag per setting, same name, and
the defaults are RunConfig's (the authors' CIFAR-100 settings, SJLeo/FFSD ``options.py``), so a
flagfile only states what differs. The loss weights are the exception: ``--loss_weights`` names a
set (recipe, the default; paper; kl_warmup: ``ffsd_tf.recipes``) that fills every ``--lambda_*``
flag and ``--leader_kl_mask`` not given (their default is None: "the set's"); a given one wins. ``validate()`` is ``RunConfig.validate``: it checks what one
flag's type cannot and raises ``FlagError`` with one line naming the problem and the fix.
"""

from __future__ import annotations

import os

from absl import flags

from ffsd_tf.config import ConfigError, RunConfig, default, flag_value
from ffsd_tf.data import DATASETS
from ffsd_tf.distribute import PRECISIONS, STRATEGIES
from ffsd_tf.trainer import DIVERSITY_MODES, LEADER_KL_MASKS, LOSS_WEIGHTS, SD_MODES, TEACHER_LOSSES

FLAGS = flags.FLAGS
FlagError = ConfigError  # a flag value or combination that cannot run; the message is one actionable line


# Data ----------------------------------------------------------------------------------------
flags.DEFINE_enum("dataset", default("dataset"), sorted(DATASETS), "Dataset to train on.")
flags.DEFINE_string("data_dir", default("data_dir"),
                    "Where the dataset lives (tfds data_dir, an .npz file/folder, an IDX folder, "
                    "or for --dataset=folder a folder with one subfolder of images per class).")
flags.DEFINE_integer("image_size", default("image_size"),
                     "Resize images to this square size (--dataset=folder: default 32).",
                     lower_bound=8)
flags.DEFINE_float("validation_split", default("validation_split"),
                   "--dataset=folder without val/ or test/: the fraction of each class held "
                   "out for evaluation (stratified, fixed: it does not change with --seed).")
flags.DEFINE_string("cache_dir", default("cache_dir"),
                    "--dataset=folder: where the prepared cache of decoded, resized images lives (default "
                    "<data_dir>/.ffsd-cache if writable, else ~/.cache/ffsd-tf).")
flags.DEFINE_bool("rebuild_cache", default("rebuild_cache"),
                  "--dataset=folder: prepare the cache again (e.g. after it was reported damaged).")
flags.DEFINE_integer("train_subset", default("train_subset"),
                     "Use only this many training images (seeded subset).", lower_bound=1)
flags.DEFINE_integer("test_subset", default("test_subset"),
                     "Use only this many test images (seeded subset).", lower_bound=1)
flags.DEFINE_enum("partial_batch", default("partial_batch"), ["drop_small", "keep", "drop"],
                  "A last, partial training batch: drop_small = drop it if under half a batch (a different tail "
                  "each epoch); keep = train on it (the authors' loader, drop_last=False); drop = never train on it.")
flags.DEFINE_integer("synthetic_classes", default("synthetic_classes"),
                     "Classes of the synthetic dataset.", lower_bound=2)
flags.DEFINE_integer("synthetic_train", default("synthetic_train"),
                     "Training images of the synthetic dataset.", lower_bound=1)
flags.DEFINE_integer("synthetic_test", default("synthetic_test"),
                     "Test images of the synthetic dataset.", lower_bound=1)

# Cohort --------------------------------------------------------------------------------------
flags.DEFINE_string("model", default("model"), "Backbone of every student and the leader (see networks/).")
flags.DEFINE_integer("num_students", default("num_students"), "Number of common students n (the leader is extra).")
flags.DEFINE_bool("mutual_learning", default("mutual_learning"),
                  "KL between common students (Eq. 2). Off + --noleader = CE baseline.")
flags.DEFINE_bool("leader", default("leader"), "Train a leader (S_0). Off = plain DML among the students.")
flags.DEFINE_bool("fusion", default("fusion"),
                  "Fusion module (Eqs. 4-5). Off = the leader distils the students' mean logits.")
flags.DEFINE_enum("diversity", default("diversity"),
                  DIVERSITY_MODES, "Diversity: attention (Eqs. 8-11), l2 (Eq. 6), none.")
flags.DEFINE_enum("self_distillation", default("self_distillation"),
                  SD_MODES, "Which self-distillation decoders to train (Table VI).")
flags.DEFINE_float("temperature", default("temperature"), "Distillation temperature T.")
flags.DEFINE_enum("leader_kl_mask", None, LEADER_KL_MASKS,
                  "The leader's KL (Eq. 14) on every sample (none, the paper) or only where its teacher "
                  "is right (teacher_correct; not in the paper). Default: --loss_weights' (recipe: "
                  "teacher_correct with a leader).")
flags.DEFINE_float("ema_decay", default("ema_decay"),
                   "Keep an exponential moving average of every classifier's weights (students, fusion module, "
                   "leader), decay per step (e.g. 0.995; warmed up as in the mean teacher), evaluated beside "
                   "it as <name>_ema; 0 = none (the paper). Not in the paper.")
flags.DEFINE_bool("ema_teacher", default("ema_teacher"),
                  "The leader's teacher (Eq. 14 and its KL mask) is the averaged cohort (--ema_decay > 0), "
                  "not the live fusion classifier. Not in the paper.")
flags.DEFINE_string("teacher_run", default("teacher_run"),
                    "Run directory of a trained network to distil offline into the common students "
                    "(Table II's KD / AT; needs --noleader): its leader, or its student1 if it had none.")
flags.DEFINE_enum("teacher_loss", default("teacher_loss"),
                  TEACHER_LOSSES, "With --teacher_run: kd (Hinton), at (attention transfer) or kd_at.")

# Loss weights: value * schedule(epoch) -------------------------------------------------------
flags.DEFINE_enum("loss_weights", default("loss_weights"), ["recipe", "paper", "kl_warmup"],
                  "The set of loss weights that fills every --lambda_* flag and --leader_kl_mask not given: "
                  "recipe = the measured recipe (no mutual KL, the fusion and leader KL warmed up over 5 epochs, "
                  "the leader's KL where its teacher is right; the Python API's default); paper = the authors' "
                  "code (every flagfile of experiments/paper/ states it); kl_warmup = the paper's with every KL "
                  "term warmed up. A --lambda_* flag given overrides it.")
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
for _key in LOSS_WEIGHTS:  # default None: the --loss_weights set's value
    flags.DEFINE_float(f"lambda_{_key}", None, f"Weight of the {_WEIGHT_HELP[_key]} (default: --loss_weights').")
    flags.DEFINE_string(
        f"lambda_{_key}_schedule", None, "Its schedule of the epoch: constant | exp_warmup:E | linear_warmup:E | "
        "piecewise:E=V,... (default: --loss_weights')."
    )

# Optimisation --------------------------------------------------------------------------------
flags.DEFINE_integer("batch_size", default("batch_size"), "Global training batch size.")
flags.DEFINE_integer("eval_batch_size", default("eval_batch_size"), "Evaluation batch size (default: batch_size).")
flags.DEFINE_integer("epochs", default("epochs"), "Epochs (the authors' loop range(1, 300) runs 299).")
flags.DEFINE_integer("steps_per_epoch", default("steps_per_epoch"),
                     "Override the steps per epoch (smoke runs); default: the whole train set.")
flags.DEFINE_float("lr", default("lr"), "SGD learning rate of students, leader and fusion.")
flags.DEFINE_list("milestones", [str(m) for m in default("milestones")],
                  "Epochs after which every learning rate is multiplied by lr_gamma.")
flags.DEFINE_float("lr_gamma", default("lr_gamma"), "Multi-step decay factor.")
flags.DEFINE_integer("lr_warmup_epochs", default("lr_warmup_epochs"),
                     "Linear per-iteration warm-up to lr over this many epochs (ImageNet: 5).")
flags.DEFINE_float("momentum", default("momentum"), "SGD momentum.")
flags.DEFINE_bool("nesterov", default("nesterov"), "Nesterov momentum.")
flags.DEFINE_float("weight_decay", default("weight_decay"), "Coupled L2 (PyTorch style) of students and leader.")
flags.DEFINE_float("fusion_weight_decay", default("fusion_weight_decay"),
                   "Coupled L2 of the fusion module (the authors' code: 1e-5).")
flags.DEFINE_float("decoder_lr", default("decoder_lr"), "Adam learning rate of the self-distillation decoders.")
flags.DEFINE_float("decoder_weight_decay", default("decoder_weight_decay"), "Coupled L2 of the decoders' Adam.")

# Run -----------------------------------------------------------------------------------------
flags.DEFINE_integer("seed", default("seed"), "Seed of initialisation, data order and augmentation.")
flags.DEFINE_bool("deterministic", default("deterministic"), "Enable TensorFlow op determinism (repeatable CPU runs).")
flags.DEFINE_string("output_dir", default("output_dir"), "Run directory: flags, checkpoints, TensorBoard, results. "
                    "--output_dir=. read from a flagfile means that flagfile's folder (a run's flags.txt stores it).")
flags.DEFINE_bool("resume", default("resume"), "Continue from the last checkpoint in output_dir if there is one.")
flags.DEFINE_bool("force_resume", default("force_resume"),
                  "Resume even when a flag that changes the result (seed, data, model, "
                  "optimisation, loss weights, schedules) differs from the run's stored one; the run continues "
                  "under the new values and records them.")
flags.DEFINE_bool("jit_compile", default("jit_compile"),
                  "XLA-compile the train step (one device only; measure first: slower on CPU).")
flags.DEFINE_enum("strategy", default("strategy"),
                  STRATEGIES, "default (one device), mirrored (local GPUs), multi_worker (TF_CONFIG).")
flags.DEFINE_bool("sync_batchnorm", default("sync_batchnorm"),
                  "Synchronise BatchNorm statistics across replicas (multi-device = one device).")
flags.DEFINE_enum("precision", default("precision"),
                  PRECISIONS, "Keras dtype policy; mixed_float16 uses a loss scale per optimizer.")
flags.DEFINE_integer("eval_every", default("eval_every"),
                     "Evaluate on the test set every this many epochs (and at the last).", lower_bound=1)
flags.DEFINE_integer("keep_checkpoints", default("keep_checkpoints"),
                     "How many epoch checkpoints to keep.", lower_bound=1)
flags.DEFINE_enum("verbose", default("verbose"), ["auto", "bar", "line", "quiet"],
                  "Progress display: bar = redrawn per step, line = one line per epoch, auto = bar on a terminal, "
                  "line otherwise (CI, nohup, captured output).")
flags.DEFINE_bool("export", default("export"), "Export the leader (SavedModel + TFLite) when training finishes.")
flags.DEFINE_string("export_dir", default("export_dir"), "Where to export (default: <output_dir>/export).")
flags.DEFINE_bool("reexport", default("reexport"),
                  "With --export: publish a new version even if export_dir already holds one of "
                  "the run's last checkpoint (a rerun of a finished --export command otherwise publishes nothing).")
flags.DEFINE_bool("export_average", default("export_average"),
                  "With --export: publish the leader's weight average (needs --ema_decay > 0) instead of its "
                  "last weights, as ffsd-export --average does.")


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


def run_config() -> RunConfig:
    """The run the parsed flags describe (its cohort's classes and input shape come with the data)."""
    return RunConfig.from_flags(FLAGS)


def milestones() -> list[int]:
    return list(flag_value("milestones", FLAGS.milestones))


def weight_schedules() -> dict:
    """Loss weight name -> callable(epoch) = lambda * schedule(epoch), from the flags (and the
    ``--loss_weights`` set where they are not given)."""
    return run_config().loss_weights.functions()


def set_filled_flags() -> dict:
    """name -> value of the flags that ``--loss_weights`` filled (covered and not given), as the run
    uses them: flags.txt states them, so it replays the run whatever the default set becomes."""
    from ffsd_tf.recipes import set_flag_values

    filled = set_flag_values(FLAGS.loss_weights, leader=FLAGS.leader)
    return {name: value for name, value in filled.items() if getattr(FLAGS, name) is None}


def validate(num_replicas: int = 1) -> None:
    """Raises FlagError for impossible values or combinations (``RunConfig.validate``)."""
    run_config().validate(num_replicas)
