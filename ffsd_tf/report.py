"""Aggregate training runs into the paper's tables: ``python -m ffsd_tf.report RUN_DIR...``.

::

    python -m ffsd_tf.report runs/r32_s0 runs/r32_s1 runs/r32_s2 \\
        --baseline=runs/r32_ce_s0,runs/r32_ce_s1,runs/r32_ce_s2 [--cosine] [--format=md|json|csv] [--output=FILE]

Every RUN_DIR is the ``--output_dir`` of a finished ``python -m ffsd_tf.run`` (it has
``config.json`` and ``results.json``). Runs are **grouped** by configuration: the cohort of
``config.json`` (``model``: backbone, students, leader, fusion, diversity, self-distillation,
temperature...), the dataset name and the number of epochs. Several seeds of one configuration
form one group; different configurations are different rows. Flags outside that key (learning
rate, loss weights...) that differ within a group are listed in the group's notes, and a seed
that appears twice is flagged too. A directory given twice counts once.

Per group and per model (each common student, the students' mean accuracy, the softmax
ensemble, "Ens" = any student right, the fusion classifier, the leader) the report gives the
mean and the **sample** standard deviation (``ddof=1``) over the runs of the best-epoch and of
the final-epoch test accuracy, with the number of runs and their seeds. With one run the
standard deviation is undefined: ``n/a`` in Markdown, ``null`` in JSON, empty in CSV.

**Baseline and gain** (Table I). ``--baseline`` names the runs of the CE baseline (trained with
``--noleader --nomutual_learning --diversity=none``); they are grouped like the others. A run's
baseline accuracy is the mean over its common students (independent CE models) of their
accuracy. A group's gain is measured against the baseline group with the same backbone,
dataset (classes, image shape) and epochs: ``gain = mean(headline) - mean(baseline)``, where
the headline model is the leader, or the students' mean accuracy for a group without a leader
(DML, Table II). Its standard deviation is the sample std of the per-seed differences when
both groups hold the same seeds once each (Table I pairs runs by seed), else
``sqrt(std_a^2 + std_b^2)`` (independent runs), ``n/a`` when either has one run.

**Cosine** (``--cosine``, Table IV, "the cosine similarity between the two student models").
The paper (Sec. IV-C) compares the students' *features*, whose diversity Eqs. 6-9 act on, and
its values (0.24-0.28 for trained students) are those of non-negative last-layer feature
maps with unrelated channel orders, not of softmax outputs (which agree on most images, cosine
near 1). So the report's ``cosine`` is::

    cosine = mean over pairs i < j of common students, mean over the test images x of
             cos(vec(F_i^L(x)), vec(F_j^L(x)))

with ``F^L`` the last feature map of each student (``features[-1]`` of the backbone, after its
ReLU), ``vec`` the flattening of H x W x C, and ``cos(a, b) = <a, b> / (||a|| ||b||)`` (0 for a
zero vector). Two companions come with it (JSON/CSV and an extra Markdown column), with the
same averaging: ``cosine_attention`` (of the Eq. 7 attention maps ``A^L`` of ``F^L``, what the
diversity loss shifts; channel-order free) and ``cosine_softmax`` (of the softmax outputs).
Each run's latest checkpoint is restored (``rundir.restore_model``) and evaluated in inference
mode on its whole test split, rebuilt from the run's ``config.json`` as ``export`` does; a group
gets the mean and std over its runs. Runs with one student have none.

Accuracies in JSON and CSV are fractions (as in ``results.json``); Markdown shows percent.
Bad input (a missing directory, a directory that is not a run, a run without
``results.json``, an unknown format or flag, an output file in a missing directory, a run
whose checkpoint cannot be restored for ``--cosine``) exits with code 2 and one line
``error: ...`` on stderr, before anything is written.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import sys

import numpy as np
from absl import flags

from ffsd_tf import rundir
from ffsd_tf.atomic import write_text_atomic
from ffsd_tf.cli import fail, parse_args
from ffsd_tf.config import NEUTRAL, settings, value_text
from ffsd_tf.rundir import CONFIG, FLAGS_FILE, MODEL_LABELS, RESULTS, RunDirError, is_student, model_label

FORMATS = ("md", "json", "csv")
# Settings never reported as differing within a group: those that do not change what is trained
# (config.NEUTRAL), the seed (a group's runs differ in it by design) and where the data lived.
IGNORED_SETTINGS = NEUTRAL | {"seed", "data_dir"}
COSINES = ("cosine", "cosine_attention", "cosine_softmax")
STD_NOTE = "sample standard deviation (ddof=1) over runs; null/n/a for a single run"

_FLAGS = flags.FlagValues()  # private: this tool's flags never meet the trainer's
flags.DEFINE_list("baseline", [], "Comma-separated run directories of the CE baseline (Table I's Baseline and Gain).",
                  flag_values=_FLAGS)
flags.DEFINE_enum("format", "md", list(FORMATS), "Output format: md (Markdown tables), json or csv.",
                  flag_values=_FLAGS)
flags.DEFINE_string("output", None, "Also write the report to this file (atomically).", flag_values=_FLAGS)
flags.DEFINE_boolean("cosine", False, "Restore every run's checkpoint and add Table IV's cosine similarity "
                     "between common students.", flag_values=_FLAGS)

USAGE = ("usage: python -m ffsd_tf.report RUN_DIR... [--baseline=RUN_DIR,...] [--format=md|json|csv] "
         "[--output=FILE] [--cosine]")


class ReportError(ValueError):
    """Input the report cannot use; the message is one actionable line."""


# ---------------------------------------------------------------------------------- reading
def _read_json(path: str):
    try:
        return rundir.read_json(path)
    except RunDirError as e:
        raise ReportError(" ".join(str(e).split())) from None
    except OSError as e:
        raise ReportError(f"cannot read {path} ({e.strerror or e})") from None


# Cohort fields added to config.json after runs were made, with the value those runs trained with
# (FFSDConfig's default; tests/test_report.py holds them equal): a run directory written before a
# field existed groups with the runs that state it.
LATER_COHORT_DEFAULTS = {"leader_kl_mask": "none", "ema_decay": 0.0, "ema_teacher": False}


def load_run(path: str) -> dict:
    """One finished run: ``{"dir", "model", "dataset", "results", "flags", "seed"}``; ReportError if it is not one.

    ``flags`` are the run's settings from its config.json (name -> value as a flag writes it)."""
    hint = "pass the --output_dir of python -m ffsd_tf.run"
    if not os.path.exists(path):
        raise ReportError(f"{path} does not exist; {hint}")
    if not os.path.isdir(path):
        raise ReportError(f"{path} is not a directory; {hint}")
    if not os.path.isfile(os.path.join(path, CONFIG)):
        raise ReportError(f"{path} is not a run directory (no {CONFIG}); {hint}")
    try:
        config = rundir.read_config_json(path)
    except RunDirError as e:
        raise ReportError(" ".join(str(e).split())) from None
    results_path = os.path.join(path, RESULTS)
    if not os.path.isfile(results_path):
        raise ReportError(
            f"{path} has no {RESULTS} (the run has not finished); finish it with "
            f"python -m ffsd_tf.run --flagfile={os.path.join(path, FLAGS_FILE)} or leave it out"
        )
    results = _read_json(results_path)
    accuracy = results.get("accuracy") if isinstance(results, dict) else None
    if not isinstance(accuracy, dict) or not accuracy:
        raise ReportError(f"{results_path} has no 'accuracy' entries; it was not written by ffsd_tf.run")
    for name, entry in accuracy.items():
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), (int, float)) and math.isfinite(entry[k]) for k in ("best", "final")
        ):
            raise ReportError(f"{results_path}: accuracy of {name!r} lacks finite 'best' and 'final' values")
    run_settings = settings(config)
    seed = run_settings.get("seed")
    return {
        "dir": path,
        "model": {**LATER_COHORT_DEFAULTS, **config["model"]},
        "dataset": config["dataset"],
        "results": results,
        "flags": {k: value_text(v) for k, v in run_settings.items()},
        "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
    }


# ---------------------------------------------------------------------------------- grouping
def method_with_weights(run: dict) -> str:
    """``method_label`` plus the loss-weight set when it is not the paper's: " (recipe)" or
    " (KL warm-up)" (that set's weights on every term the method uses; ``recipes.WEIGHT_SET_LABELS``)
    or " (custom loss weights)". The recipe is its weights and, with a leader, its options
    (``recipes.RECIPE_OPTIONS``): "FFSD (recipe)"; its weights without them are
    "FFSD (recipe weights, leader KL unmasked)" (the recipe before the mask)."""
    from ffsd_tf.recipes import RECIPE_OPTIONS, WEIGHT_SET_LABELS, named_set

    weights = run_loss_weights(run)
    label = method_label(run["model"])
    if not weights or named_set(weights, list(weights), among=("paper",)) is not None:
        return label  # the paper's (also where a named set equals it on every term used)
    name = named_set(weights, list(weights), among=tuple(WEIGHT_SET_LABELS))
    if name == "recipe" and run["model"].get("leader", True):
        if all(run["model"].get(k) == v for k, v in RECIPE_OPTIONS.items()):
            return f"{_cohort_label(run['model'])}{_averages_label(run['model'])} (recipe)"
        return f"{label} (recipe weights, leader KL unmasked)"
    return f"{label} ({WEIGHT_SET_LABELS[name]})" if name is not None else f"{label} (custom loss weights)"


def method_label(model: dict) -> str:
    """A short name of the training method of a cohort config (the paper's column names), with
    " + teacher-correct leader KL" for ``leader_kl_mask="teacher_correct"``, " + EMA teacher" and
    " (EMA d)" for ``ema_teacher`` and ``ema_decay`` (not in the paper)."""
    masked = model.get("leader_kl_mask", "none") == "teacher_correct"
    return _cohort_label(model) + (" + teacher-correct leader KL" if masked else "") + _averages_label(model)


def _averages_label(model: dict) -> str:
    """" + EMA teacher" for ``ema_teacher``, then " (EMA d)" for ``ema_decay`` d > 0; else ""."""
    label = " + EMA teacher" if model.get("ema_teacher", False) else ""
    return label + (f" (EMA {model['ema_decay']:g})" if model.get("ema_decay", 0.0) else "")


def _cohort_label(model: dict) -> str:
    leader, fusion = model.get("leader", True), model.get("fusion", True)
    mutual, diversity = model.get("mutual_learning", True), model.get("diversity", "attention")
    sd = model.get("self_distillation", "both")
    if model.get("teacher"):
        offline = {"kd": "KD", "at": "AT", "kd_at": "KD + AT"}[model.get("teacher_loss", "kd")]
        online = "" if not mutual or model.get("num_students", 1) < 2 else " + DML"
        return f"{offline}{online} from {model['teacher']}"
    if not leader:
        if not mutual and diversity == "none":
            return "CE baseline"
        label = "DML" if mutual else "independent students"
        return label if diversity == "none" else f"{label} + {diversity} diversity"
    if not fusion:
        label = "DML + leader" if mutual else "leader (no mutual learning)"
        return label if diversity == "none" else f"{label} + {diversity} diversity"
    label = "FFSD" if mutual else "FFSD (no mutual learning)"
    if diversity == "l2":
        label += " with L2 diversity"
    elif diversity == "none":
        label += " without diversity"
    if sd == "none":
        label += " w/o SD"
    elif sd != "both" and (diversity == "attention" or sd == "leader"):
        label += f" SD on {sd} only"
    return label


def run_loss_weights(run: dict) -> dict:
    """The loss weights a run's terms use: name -> (value, schedule spec), from its flags."""
    from ffsd_tf.loss_terms import active_loss_weights
    from ffsd_tf.recipes import PAPER_LOSS_WEIGHTS

    out = {}
    for k in active_loss_weights(run["model"]):
        value, spec = PAPER_LOSS_WEIGHTS[k]  # flag defaults where the flags do not say
        try:
            value = float(run["flags"].get(f"lambda_{k}", value))
        except ValueError:
            pass
        out[k] = (value, str(run["flags"].get(f"lambda_{k}_schedule", spec)))
    return out


def group_key(run: dict) -> str:
    """Runs of one configuration: the cohort, dataset, epochs and the loss weights its terms use."""
    weights = {k: list(v) for k, v in run_loss_weights(run).items()}
    return json.dumps(
        {"model": run["model"], "dataset": run["dataset"].get("name"), "epochs": run["results"].get("epochs"),
         "weights": weights},
        sort_keys=True,
    )


def baseline_key(group: dict) -> str:
    """What a baseline must share with a group: backbone, dataset, classes, image shape, epochs."""
    m = group["model"]
    return json.dumps(
        [m.get("model"), group["dataset"], m.get("num_classes"), list(m.get("input_shape", [])), group["epochs"]]
    )


def student_names(runs) -> list[str]:
    names = {k for r in runs for k in r["results"]["accuracy"] if is_student(k)}
    return sorted(names, key=lambda k: int(k[7:]))


def model_names(runs) -> list[str]:
    present = {k for r in runs for k in r["results"]["accuracy"]}
    return student_names(runs) + [k for k in MODEL_LABELS if k in present]


def stats(values) -> dict:
    """mean, sample std (ddof=1; None for one value), n and the values themselves."""
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(a.mean()) if a.size else None,
        "std": float(a.std(ddof=1)) if a.size > 1 else None,
        "n": int(a.size),
        "values": [float(v) for v in a],
    }


def baseline_value(run: dict, which: str) -> float:
    """A run's baseline accuracy: the mean over its common students (independent CE models)."""
    acc = run["results"]["accuracy"]
    return float(np.mean([acc[k][which] for k in student_names([run])]))


def make_group(runs: list[dict], baseline: bool) -> dict:
    first = runs[0]
    seeds = [r["seed"] for r in runs]
    notes = []
    differing = sorted(
        k
        for k in set().union(*(r["flags"] for r in runs))
        if k not in IGNORED_SETTINGS and len({r["flags"].get(k) for r in runs}) > 1
    )
    if differing:
        notes.append("flags differ: " + ", ".join(differing))
    repeated = sorted({s for s in seeds if s is not None and seeds.count(s) > 1})
    if repeated:
        notes.append("repeated seed " + ", ".join(map(str, repeated)))
    names = model_names(runs)
    accuracy = {}
    for name in names:
        have = [r for r in runs if name in r["results"]["accuracy"]]
        accuracy[name] = {
            which: stats([r["results"]["accuracy"][name][which] for r in have]) for which in ("best", "final")
        }
        accuracy[name]["best_epoch"] = [r["results"]["accuracy"][name].get("best_epoch") for r in have]
    group = {
        "baseline": baseline,
        "method": method_with_weights(first),
        "model": first["model"],
        "dataset": first["dataset"].get("name"),
        "epochs": first["results"].get("epochs"),
        "num_runs": len(runs),
        "seeds": seeds,
        "runs": [r["dir"] for r in runs],
        "notes": notes,
        "differing_flags": differing,
        "accuracy": accuracy,
        "baseline_accuracy": {which: stats([baseline_value(r, which) for r in runs]) for which in ("best", "final")},
        **run_costs(runs),
    }
    return group


def run_costs(runs: list[dict]) -> dict:
    """``train_seconds`` and ``train_cpu_seconds`` (results.json: every epoch's wall and CPU time;
    the CPU time is the fair cost on a shared machine) and ``train_acc`` (the last
    history entry's running training accuracy of the leader, else of student 1) over the runs
    that have them: is it an overfitting regime, and what did it cost."""
    seconds, cpu, train = [], [], []
    for r in runs:
        for key, into in (("train_seconds", seconds), ("train_cpu_seconds", cpu)):
            t = r["results"].get(key)
            if isinstance(t, (int, float)) and math.isfinite(t) and t > 0:
                into.append(float(t))
        history = _read_json_or_none(os.path.join(r["dir"], rundir.HISTORY))
        if isinstance(history, list) and history and isinstance(history[-1], dict):
            key = "leader/acc" if "leader" in r["results"]["accuracy"] else "student1/acc"
            value = history[-1].get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                train.append(float(value))
    return {"train_seconds": stats(seconds) if seconds else None, "train_cpu_seconds": stats(cpu) if cpu else None,
            "train_acc": stats(train) if train else None}


def _read_json_or_none(path: str):
    """A run's optional file: None when it is missing or damaged (the accuracy tables do not need it)."""
    try:
        return rundir.read_json(path)
    except (OSError, RunDirError):
        return None


def group_runs(runs: list[dict], baseline: bool) -> list[dict]:
    order: dict[str, list[dict]] = {}
    for r in runs:
        order.setdefault(group_key(r), []).append(r)
    return [make_group(rs, baseline) for rs in order.values()]


def headline_model(group: dict) -> str:
    """The model a group is judged by: the leader, else the students' mean, else student 1."""
    for name in ("leader", "students_mean"):
        if name in group["accuracy"]:
            return name
    return next(iter(group["accuracy"]))


def gain(group: dict, base: dict) -> dict:
    """``headline - baseline`` for best and final accuracy (see the module docstring for the std)."""
    name = headline_model(group)
    out = {"model": name, "baseline_group": base["id"]}
    seeds_a, seeds_b = group["seeds"], base["seeds"]
    paired = (
        None not in seeds_a
        and len(set(seeds_a)) == len(seeds_a)
        and sorted(seeds_a) == sorted(seeds_b)
        and len(set(seeds_b)) == len(seeds_b)
        and len(group["accuracy"][name]["best"]["values"]) == len(seeds_a)
    )
    for which in ("best", "final"):
        a, b = group["accuracy"][name][which], base["baseline_accuracy"][which]
        mean = a["mean"] - b["mean"]
        if paired:
            by_seed = dict(zip(seeds_b, b["values"]))
            diffs = np.asarray([v - by_seed[s] for s, v in zip(seeds_a, a["values"])])
            std = float(diffs.std(ddof=1)) if diffs.size > 1 else None
            how = "paired by seed"
        else:
            std = math.sqrt(a["std"] ** 2 + b["std"] ** 2) if a["std"] is not None and b["std"] is not None else None
            how = "independent"
        out[which] = {"mean": float(mean), "std": std, "n": a["n"], "n_baseline": b["n"], "std_from": how}
    return out


def build_report(run_dirs, baseline_dirs=(), cosine: bool = False, cosine_fn=None) -> dict:
    """Reads, groups and summarises the runs; raises ReportError on bad input (before any output)."""
    run_dirs, baseline_dirs = list(run_dirs), list(baseline_dirs)
    if not run_dirs and not baseline_dirs:
        raise ReportError(f"no run directories given; {USAGE}")
    seen = set()

    def load_all(paths):
        out = []
        for p in paths:
            key = os.path.realpath(p)
            if key in seen:
                continue
            seen.add(key)
            out.append(load_run(p))
        return out

    baseline_runs = load_all(baseline_dirs)  # a directory in both lists is a baseline
    runs = load_all(run_dirs)
    groups = group_runs(runs, baseline=False) + group_runs(baseline_runs, baseline=True)
    for i, g in enumerate(groups):
        g["id"] = _group_id(i)

    baselines: dict[str, list[dict]] = {}
    for g in groups:
        if g["baseline"]:
            baselines.setdefault(baseline_key(g), []).append(g)
    for g in groups:
        g["gain"] = None
        if g["baseline"]:
            continue
        found = baselines.get(baseline_key(g), [])
        if len(found) > 1:
            raise ReportError(
                f"the baseline runs of {g['model'].get('model')} on {g['dataset']} ({g['epochs']} epochs) come in "
                f"{len(found)} configurations (groups {', '.join(b['id'] for b in found)}); pass runs of one"
            )
        if found:
            g["gain"] = gain(g, found[0])
        elif baseline_runs:
            g["notes"].append("no baseline with the same model, dataset and epochs")
    # Online distillation without a leader (DML) of the same setting: the leader's gain over its students' mean.
    dml: dict[str, list[dict]] = {}
    for g in groups:
        if not g["baseline"] and g["method"].startswith("DML") and "leader" not in g["accuracy"]:
            dml.setdefault(baseline_key(g), []).append(g)
    for g in groups:
        g["gain_dml"] = None
        found = dml.get(baseline_key(g), [])
        if "leader" in g["accuracy"] and len(found) == 1:
            g["gain_dml"] = gain(g, found[0])
        elif "leader" in g["accuracy"] and len(found) > 1:
            g["notes"].append(f"{len(found)} DML configurations of this setting: no gain over DML")

    if cosine:
        cosine_fn = cosine_fn or run_cosines
        for g in groups:
            per_run = [cosine_fn(d) for d in g["runs"]]
            per_run = [c for c in per_run if c is not None]
            g["cosine"] = {k: stats([c[k] for c in per_run]) for k in COSINES} if per_run else None
            if per_run:
                g["cosine"]["test_images"] = [c["images"] for c in per_run]
    return {
        "num_runs": len(runs) + len(baseline_runs),
        "std": STD_NOTE,
        "accuracy_unit": "fraction",
        "cosine_definition": COSINE_DEFINITION if cosine else None,
        "groups": groups,
    }


COSINE_DEFINITION = (
    "mean over pairs of common students and over the test images of cos(vec(F_i^L), vec(F_j^L)), "
    "F^L = last feature map; cosine_attention: same on the Eq. 7 attention maps of F^L; "
    "cosine_softmax: same on the softmax outputs"
)


def _group_id(i: int) -> str:
    letters = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        letters = chr(ord("A") + r) + letters
    return letters


# ---------------------------------------------------------------------------------- cosine
def run_cosines(run_dir: str) -> dict | None:
    """Table IV's cosine (and its attention / softmax companions) of one run; None with < 2 students.

    Restores the run's latest checkpoint and runs every common student in inference mode over
    the run's whole test split. Raises ReportError when the checkpoint or data cannot be had.
    """
    from ffsd_tf.quiet import import_tensorflow_quietly

    tf = import_tensorflow_quietly()
    tf.get_logger().setLevel("ERROR")

    from ffsd_tf.attention import attention_map, normalize
    from ffsd_tf.data import DataError

    try:
        model, _, _ = rundir.restore_model(run_dir)
        if model.config.num_students < 2:
            return None
        bundle = rundir.load_run_data(run_dir)
    except (rundir.RunDirError, DataError) as e:
        raise ReportError(" ".join(str(e).split())) from None
    students = model.common_students
    n = len(students)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]

    @tf.function(reduce_retracing=True)
    def batch_sums(images):
        outs = [s(images, training=False) for s in students]
        vectors = {
            "cosine": [normalize(o["features"][-1]) for o in outs],
            "cosine_attention": [normalize(attention_map(o["features"][-1])) for o in outs],
            "cosine_softmax": [normalize(tf.nn.softmax(tf.cast(o["logits"], tf.float32))) for o in outs],
        }
        return {
            k: tf.add_n([tf.reduce_sum(v[i] * v[j]) for i, j in pairs]) / float(len(pairs)) for k, v in vectors.items()
        }

    totals = dict.fromkeys(COSINES, 0.0)
    count = 0
    for images, _ in bundle.test_dataset():
        for k, v in batch_sums(images).items():
            totals[k] += float(v)
        count += int(images.shape[0])
    if count == 0:
        raise ReportError(f"the test split of {run_dir} is empty")
    return {**{k: totals[k] / count for k in COSINES}, "images": count}


# ---------------------------------------------------------------------------------- output
def _pct(s: dict | None, digits: int = 2) -> str:
    if not s or s.get("mean") is None:
        return "–"
    std = "n/a" if s["std"] is None else f"{100 * s['std']:.{digits}f}"
    return f"{100 * s['mean']:.{digits}f} ± {std}"


def _num(s: dict | None, digits: int = 4) -> str:
    if not s or s.get("mean") is None:
        return "–"
    std = "n/a" if s["std"] is None else f"{s['std']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {std}"


def _gain_pct(g: dict | None, which: str) -> str:
    if g is None:
        return "–"
    s = g[which]
    std = "n/a" if s["std"] is None else f"{100 * s['std']:.2f}"
    return f"{100 * s['mean']:+.2f} ± {std}"


def _minutes(s: dict | None) -> dict | None:
    if not s:
        return None
    return {**s, "mean": s["mean"] / 60, "std": None if s["std"] is None else s["std"] / 60}


def _row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def to_markdown(report: dict) -> str:
    groups = report["groups"]
    lines = [
        f"# FFSD report: {report['num_runs']} runs, {len(groups)} configurations",
        "",
        "Test accuracy (%) as mean ± sample standard deviation (ddof=1) over the runs of a configuration "
        "(n/a: one run). Best: each run's best epoch; final: its last epoch. Baseline: the CE baseline's mean "
        "common-student accuracy (same model, dataset, epochs); Gain: the leader (the students' mean without a "
        "leader) minus Baseline.",
        "",
        "## Configurations",
        "",
        _row(["", "method", "model", "dataset", "students", "epochs", "runs", "seeds", "notes"]),
        "|---|---|---|---|---:|---:|---:|---|---|",
    ]
    for g in groups:
        seeds = ", ".join("?" if s is None else str(s) for s in g["seeds"])
        lines.append(_row([
            g["id"] + (" (baseline)" if g["baseline"] else ""), g["method"], g["model"].get("model"), g["dataset"],
            g["model"].get("num_students"), g["epochs"], g["num_runs"], seeds, "; ".join(g["notes"]),
        ]))
    students = sorted({k for g in groups for k in g["accuracy"] if k not in MODEL_LABELS}, key=lambda k: int(k[7:]))
    columns = students + list(MODEL_LABELS)
    columns = [c for c in columns if any(c in g["accuracy"] for g in groups)]
    for which, title in (("best", "Best-epoch test accuracy (%), Table I layout"), ("final", "Final-epoch test accuracy (%)")):
        lines += ["", f"## {title}", ""]
        lines.append(_row(["", "Baseline"] + [model_label(c) for c in columns] + ["Gain"]))
        lines.append("|---|" + "---:|" * (len(columns) + 2))
        by_id = {g["id"]: g for g in groups}
        for g in groups:
            if g["baseline"]:
                base = _pct(g["baseline_accuracy"][which])
            elif g["gain"] is not None:
                base = _pct(by_id[g["gain"]["baseline_group"]]["baseline_accuracy"][which])
            else:
                base = "–"
            cells = [_pct(g["accuracy"].get(c, {}).get(which)) for c in columns]
            lines.append(_row([g["id"], base] + cells + [_gain_pct(g["gain"], which)]))
    lines += [
        "",
        "## Summary: the model you deploy against training alone",
        "",
        "Headline: the leader (without one: the students' mean). Train acc: its running accuracy over the last "
        "epoch's augmented batches (train - test >= 5 points: an overfitting regime). Wall and CPU: every epoch's "
        "wall and CPU time (all threads) of one run; on a shared machine the CPU time is the fair cost. Gains on final-epoch accuracy, points: over CE (the --baseline runs of the same setting) and "
        "over DML's students' mean (a DML group of the same setting).",
        "",
        _row(["", "method", "model", "dataset", "epochs", "headline", "final (%)", "best (%)", "train acc (%)",
              "wall (min)", "CPU (min)", "gain vs CE", "gain vs DML"]),
        "|---|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in groups:
        head = "students_mean" if g["baseline"] else headline_model(g)
        acc = g["baseline_accuracy"] if g["baseline"] else g["accuracy"][head]
        wall_min, cpu_min = (_minutes(g.get(k)) for k in ("train_seconds", "train_cpu_seconds"))
        lines.append(_row([
            g["id"], g["method"], g["model"].get("model"), g["dataset"], g["epochs"],
            "students' mean" if g["baseline"] else model_label(head), _pct(acc["final"]), _pct(acc["best"]),
            _pct(g.get("train_acc"), 1), _num(wall_min, 1), _num(cpu_min, 1), _gain_pct(g["gain"], "final"),
            _gain_pct(g.get("gain_dml"), "final"),
        ]))
    if any("cosine" in g for g in groups):
        lines += [
            "",
            "## Diversity of the common students, Table IV layout",
            "",
            "Cosine: mean over student pairs and test images of the cosine similarity of the students' flattened "
            "last feature maps F^L (attention: of their Eq. 7 attention maps; softmax: of their softmax outputs). "
            "Accuracies: best epoch.",
            "",
            _row(["", "method", "Students' mean (%)", "Fusion (%)", "Cosine", "Cosine (attention)", "Cosine (softmax)"]),
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for g in groups:
            c = g.get("cosine") or {}
            lines.append(_row([
                g["id"], g["method"], _pct(g["accuracy"].get("students_mean", {}).get("best")),
                _pct(g["accuracy"].get("fusion", {}).get("best")),
                _num(c.get("cosine")), _num(c.get("cosine_attention")), _num(c.get("cosine_softmax")),
            ]))
    return "\n".join(lines) + "\n"


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=True) + "\n"


CSV_COLUMNS = ["group", "baseline", "method", "model", "dataset", "num_students", "epochs", "runs", "seeds",
               "quantity", "of", "mean", "std", "n"]


def to_csv(report: dict) -> str:
    """Long format: one line per (group, quantity, model); quantity is best_acc, final_acc,
    baseline_best_acc, baseline_final_acc, gain_best, gain_final, gain_dml_best, gain_dml_final,
    train_acc, train_seconds, train_cpu_seconds or one of the cosines."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for g in report["groups"]:
        head = [g["id"], int(g["baseline"]), g["method"], g["model"].get("model"), g["dataset"],
                g["model"].get("num_students"), g["epochs"], g["num_runs"],
                " ".join("" if s is None else str(s) for s in g["seeds"])]

        def emit(quantity, of, s):
            std = "" if s.get("std") is None else repr(s["std"])
            writer.writerow(head + [quantity, of, repr(s["mean"]), std, s.get("n", "")])

        for which in ("best", "final"):
            for name, acc in g["accuracy"].items():
                emit(f"{which}_acc", name, acc[which])
        for which in ("best", "final"):
            emit(f"baseline_{which}_acc", "students", g["baseline_accuracy"][which])
        if g["gain"] is not None:
            for which in ("best", "final"):
                emit(f"gain_{which}", g["gain"]["model"], g["gain"][which])
        if g.get("gain_dml") is not None:
            for which in ("best", "final"):
                emit(f"gain_dml_{which}", g["gain_dml"]["model"], g["gain_dml"][which])
        for quantity in ("train_acc", "train_seconds", "train_cpu_seconds"):
            if g.get(quantity):
                emit(quantity, "leader" if "leader" in g["accuracy"] else "student1", g[quantity])
        for k in COSINES:
            if g.get("cosine"):
                emit(k, "students", g["cosine"][k])
    return buf.getvalue()


RENDER = {"md": to_markdown, "json": to_json, "csv": to_csv}


# ---------------------------------------------------------------------------------- CLI
def check_output_path(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ReportError(f"--output={path} is a directory; give a file name")
    if not os.path.isdir(directory):
        raise ReportError(f"--output={path}: directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise ReportError(f"--output={path}: directory {directory} is not writable")


def expand_patterns(paths, what: str) -> list[str]:
    """Expands shell-style patterns the shell left alone (``--baseline=runs/ce_s*`` is one word
    to the shell, and a quoted RUN_DIR pattern too); a pattern matching nothing is an error."""
    out = []
    for p in paths:
        if glob.has_magic(p):
            matches = sorted(glob.glob(p))
            if not matches:
                raise ReportError(f"{what} pattern {p} matches nothing; pass run directories of python -m ffsd_tf.run")
            out += matches
        else:
            out.append(p)
    return out


def main(argv=None) -> int:
    args = parse_args(_FLAGS, list(sys.argv if argv is None else argv), __doc__, USAGE)
    if args is None:
        return 0
    try:
        if _FLAGS.output:
            check_output_path(_FLAGS.output)
        baseline = expand_patterns([b for b in (s.strip() for s in _FLAGS.baseline) if b], "--baseline")
        report = build_report(expand_patterns(args, "RUN_DIR"), baseline, cosine=_FLAGS.cosine)
        text = RENDER[_FLAGS.format](report)
        if _FLAGS.output:
            write_text_atomic(_FLAGS.output, text)
    except ReportError as e:
        fail(str(e))
    except OSError as e:
        fail(f"{e.filename or ''}: {e.strerror or e}")
    sys.stdout.write(text)
    sys.stdout.flush()
    return 0


def console_main():
    """The ``ffsd-report`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
