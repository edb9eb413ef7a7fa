"""`python -m ffsd_tf.report`: grouping, mean / sample std per model, gain, formats, cosine, bad input.

Four real runs are trained once (ResNet-8 on a small synthetic task, 2 epochs): FFSD with seeds 1
and 2 and the CE baseline (``--noleader --nomutual_learning --diversity=none``) with seeds 1 and 2.
Expected numbers are recomputed here with NumPy from each run's results.json and history.json.
"""

import csv
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, SYNTHETIC, child_env, run_module

SMALL = [*SYNTHETIC, "--milestones=", "--epochs=2", "--verbose=quiet", "--loss_weights=paper"]  # the paper's FFSD
CE = ["--noleader", "--nomutual_learning", "--diversity=none"]
MODELS = ["student1", "student2", "students_mean", "ensemble", "ens_any", "fusion", "leader"]


def cli(*args, timeout=300):
    return run_module("ffsd_tf.report", args, timeout=timeout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    specs = {"ffsd1": ["--seed=1"], "ffsd2": ["--seed=2"], "ce1": ["--seed=1", *CE], "ce2": ["--seed=2", *CE]}
    dirs = {name: str(base / name) for name in specs}
    # Two at a time: the machine has two cores and each run is mostly single-threaded.
    names = list(specs)
    for pair in (names[:2], names[2:]):
        procs = {
            n: subprocess.Popen([sys.executable, "-m", "ffsd_tf.run", *SMALL, *specs[n], f"--output_dir={dirs[n]}"],
                                cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for n in pair
        }
        for n, p in procs.items():
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-2000:]
    return dirs


def load(run_dir, name):
    with open(os.path.join(run_dir, name)) as f:
        return json.load(f)


def report_json(*args):
    proc = cli(*args, "--format=json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return json.loads(proc.stdout)


def by_method(report):
    return {g["method"]: g for g in report["groups"]}


def test_mean_std_gain_match_hand_computation(runs):
    report = report_json(runs["ffsd1"], runs["ffsd2"], f"--baseline={runs['ce1']},{runs['ce2']}")
    groups = by_method(report)
    assert set(groups) == {"FFSD", "CE baseline"}
    ffsd, ce = groups["FFSD"], groups["CE baseline"]
    assert ffsd["num_runs"] == 2 and ffsd["seeds"] == [1, 2] and not ffsd["baseline"]
    assert ce["num_runs"] == 2 and sorted(ce["seeds"]) == [1, 2] and ce["baseline"]

    results = [load(runs[n], "results.json")["accuracy"] for n in ("ffsd1", "ffsd2")]
    histories = [load(runs[n], "history.json") for n in ("ffsd1", "ffsd2")]
    assert set(ffsd["accuracy"]) == set(MODELS)
    for name in MODELS:
        # The per-run numbers, straight from the history: best over epochs and the last epoch.
        best = np.array([max(h[f"val_{name}/acc"] for h in hist) for hist in histories])
        final = np.array([hist[-1][f"val_{name}/acc"] for hist in histories])
        np.testing.assert_allclose(best, [r[name]["best"] for r in results])
        for which, values in (("best", best), ("final", final)):
            got = ffsd["accuracy"][name][which]
            assert got["n"] == 2
            assert got["mean"] == pytest.approx(values.mean(), abs=1e-12), (name, which)
            assert got["std"] == pytest.approx(values.std(ddof=1), abs=1e-12), (name, which)

    # Baseline: per run, the mean of its common students; gain: leader mean - baseline mean.
    ce_results = [load(runs[n], "results.json")["accuracy"] for n in ("ce1", "ce2")]
    for which in ("best", "final"):
        base = np.array([np.mean([r["student1"][which], r["student2"][which]]) for r in ce_results])
        assert ce["baseline_accuracy"][which]["mean"] == pytest.approx(base.mean(), abs=1e-12)
        leader = np.array([r["leader"][which] for r in results])
        gain = ffsd["gain"][which]
        assert ffsd["gain"]["model"] == "leader" and ffsd["gain"]["baseline_group"] == ce["id"]
        assert gain["mean"] == pytest.approx(leader.mean() - base.mean(), abs=1e-12)
        # Same seeds on both sides: the std is that of the per-seed differences (Table I).
        assert gain["std_from"] == "paired by seed"
        assert gain["std"] == pytest.approx((leader - base).std(ddof=1), abs=1e-12)
    assert ce["gain"] is None


def md_table(text, title):
    """{row id: {column: cell}} of the Markdown table under the heading starting with ``title``."""
    section = text.split(f"## {title}")[1].split("\n## ")[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


def test_markdown_is_the_default_and_shows_the_same_numbers(runs, tmp_path):
    out = tmp_path / "report.md"
    proc = cli(runs["ffsd1"], runs["ffsd2"], f"--baseline={runs['ce1']},{runs['ce2']}", f"--output={out}")
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == proc.stdout
    labels = {"student1": "Common student 1", "student2": "Common student 2", "students_mean": "Students' mean",
              "ensemble": "Softmax ensemble", "ens_any": "Ens (any student right)", "fusion": "Fusion classifier",
              "leader": "Leader"}
    differs = False  # the check below only means something if best and final differ somewhere
    for which, title in (("best", "Best-epoch"), ("final", "Final-epoch")):
        table = md_table(proc.stdout, title)
        for row, names in (("A", ("ffsd1", "ffsd2")), ("B", ("ce1", "ce2"))):
            results = [load(runs[n], "results.json")["accuracy"] for n in names]
            for name, label in labels.items():
                if name not in results[0]:
                    assert table[row][label] == "–"
                    continue
                v = np.array([r[name][which] for r in results])
                differs |= any(r[name]["best"] != r[name]["final"] for r in results)
                assert table[row][label] == f"{100 * v.mean():.2f} ± {100 * v.std(ddof=1):.2f}", (which, row, name)
        assert table["A"]["Gain"][0] in "+-" and table["B"]["Gain"] == "–"
        assert table["A"]["Baseline"] == table["B"]["Baseline"] != "–"
    assert differs


def test_patterns_the_shell_leaves_alone_are_expanded(runs):
    """``--baseline=runs/ce_s*`` reaches the tool unexpanded (one shell word): the README's usage."""
    base = os.path.dirname(runs["ce1"])
    listed = report_json(runs["ffsd1"], runs["ffsd2"], f"--baseline={runs['ce1']},{runs['ce2']}")
    patterns = report_json(os.path.join(base, "ffsd*"), f"--baseline={os.path.join(base, 'ce*')}")
    assert patterns == listed
    proc = cli(runs["ffsd1"], f"--baseline={os.path.join(base, 'nothing*')}")
    assert proc.returncode == 2 and "matches nothing" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_configurations_become_groups_and_one_run_has_no_std(runs):
    # Everything positional: FFSD and CE runs are two configurations, not one.
    report = report_json(runs["ffsd1"], runs["ce1"], runs["ffsd2"], runs["ce2"], runs["ffsd1"])  # ffsd1 twice
    groups = by_method(report)
    assert set(groups) == {"FFSD", "CE baseline"}
    assert groups["FFSD"]["num_runs"] == 2  # a directory given twice counts once
    assert all(g["gain"] is None for g in report["groups"])  # no --baseline, no gain
    single = report_json(runs["ffsd1"])["groups"][0]
    assert single["accuracy"]["leader"]["best"]["std"] is None
    assert single["accuracy"]["leader"]["best"]["n"] == 1
    md = cli(runs["ffsd1"]).stdout
    assert "± n/a" in md and "± 0.00" not in md


def test_csv_has_one_line_per_model_and_quantity(runs):
    proc = cli(runs["ffsd1"], runs["ffsd2"], f"--baseline={runs['ce1']},{runs['ce2']}", "--format=csv")
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    leader = [r for r in rows if r["quantity"] == "final_acc" and r["of"] == "leader"]
    assert len(leader) == 1
    values = np.array([load(runs[n], "results.json")["accuracy"]["leader"]["final"] for n in ("ffsd1", "ffsd2")])
    assert float(leader[0]["mean"]) == pytest.approx(values.mean(), abs=1e-12)
    assert float(leader[0]["std"]) == pytest.approx(values.std(ddof=1), abs=1e-12)
    assert leader[0]["seeds"] == "1 2" and leader[0]["runs"] == "2"
    assert {r["quantity"] for r in rows} >= {"best_acc", "final_acc", "gain_best", "gain_final", "baseline_best_acc"}


@pytest.fixture
def bad_dirs(runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(os.path.join(runs["ffsd1"], "config.json"), unfinished)
    return {"missing": str(tmp_path / "nope"), "empty": str(empty), "unfinished": str(unfinished),
            "file": os.path.join(runs["ffsd1"], "config.json")}


@pytest.mark.parametrize(
    "case, expect",
    [
        ("missing", "does not exist"),
        ("empty", "not a run directory"),
        ("unfinished", "no results.json"),
        ("file", "not a directory"),
        ("bad_format", "--format"),
        ("bad_baseline", "does not exist"),
        ("output_dir_missing", "does not exist"),
        ("unknown_flag", "bogus"),
        ("no_args", "no run directories"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(runs, bad_dirs, tmp_path, case, expect):
    out = tmp_path / "out.md"
    args = {
        "missing": [bad_dirs["missing"]],
        "empty": [bad_dirs["empty"]],
        "unfinished": [runs["ffsd1"], bad_dirs["unfinished"]],
        "file": [bad_dirs["file"]],
        "bad_format": [runs["ffsd1"], "--format=xml"],
        "bad_baseline": [runs["ffsd1"], f"--baseline={bad_dirs['missing']}"],
        "output_dir_missing": [runs["ffsd1"], f"--output={tmp_path / 'no' / 'dir.md'}"],
        "unknown_flag": [runs["ffsd1"], "--bogus=1"],
        "no_args": [],
    }[case]
    proc = cli(*args, f"--output={out}") if case != "output_dir_missing" else cli(*args)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not (tmp_path / "no").exists()


def test_cosine_without_checkpoint_is_bad_input(runs, tmp_path):
    broken = tmp_path / "nockpt"
    shutil.copytree(runs["ffsd1"], broken)
    shutil.rmtree(broken / "checkpoints")
    assert cli(str(broken)).returncode == 0  # accuracy alone does not need the checkpoint
    proc = cli(str(broken), "--cosine")
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: ") and "checkpoint" in proc.stderr


def hand_cosines(run_dir):
    """Table IV's cosine of one run, recomputed with NumPy from the restored students."""
    from ffsd_tf import rundir

    model, _, _ = rundir.restore_model(run_dir)
    bundle = rundir.load_run_data(run_dir)
    x = bundle.normalize(bundle.x_test).numpy()
    outs = [s(x, training=False) for s in model.common_students]
    feats = [o["features"][-1].numpy().reshape(len(x), -1).astype(np.float64) for o in outs]
    att = [np.mean(o["features"][-1].numpy().astype(np.float64) ** 2, axis=-1).reshape(len(x), -1) for o in outs]
    logits = [o["logits"].numpy().astype(np.float64) for o in outs]
    probs = [np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)
             for z in logits]

    def cos(a, b):
        return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))

    return {"cosine": cos(*feats), "cosine_attention": cos(*att), "cosine_softmax": cos(*probs)}, model


def test_cosine_matches_numpy_and_is_one_for_identical_students(runs, tmp_path):
    from ffsd_tf import report, rundir

    rep = report_json(runs["ffsd1"], runs["ffsd2"], "--cosine")
    group = rep["groups"][0]
    assert rep["cosine_definition"]
    expected, model = hand_cosines(runs["ffsd1"])
    for key in ("cosine", "cosine_attention", "cosine_softmax"):
        stats = group["cosine"][key]
        assert stats["n"] == 2 and np.isfinite(stats["mean"]) and np.isfinite(stats["std"])
        assert all(-1.0 <= v <= 1.0 for v in stats["values"])
        assert stats["values"][0] == pytest.approx(expected[key], abs=1e-4), key
    assert group["cosine"]["test_images"] == [128, 128]
    # Two different students are not the same network: their last feature maps are far from parallel.
    assert expected["cosine"] < 0.9

    # The same run with student 2 made a copy of student 1: every cosine becomes 1.
    twin = tmp_path / "twin"
    shutil.copytree(runs["ffsd1"], twin)
    shutil.rmtree(twin / "checkpoints")
    model.common_students[1].set_weights(model.common_students[0].get_weights())
    ckpt = rundir.checkpoint_for(model, with_optimizers=False)
    import tensorflow as tf

    tf.train.CheckpointManager(ckpt, str(twin / "checkpoints"), max_to_keep=1).save()
    same = report.run_cosines(str(twin))
    for key in ("cosine", "cosine_attention", "cosine_softmax"):
        assert same[key] == pytest.approx(1.0, abs=1e-5), key


def test_a_masked_leader_kl_is_its_own_method():
    """Runs with --leader_kl_mask=teacher_correct are named (and so grouped) apart from the rest."""
    from ffsd_tf.report import method_label

    cohort = {"leader": True, "fusion": True, "mutual_learning": True, "diversity": "attention"}
    assert method_label(cohort) == "FFSD"
    assert method_label({**cohort, "leader_kl_mask": "none"}) == "FFSD"
    assert method_label({**cohort, "leader_kl_mask": "teacher_correct"}) == "FFSD + teacher-correct leader KL"
    assert method_label({**cohort, "fusion": False, "leader_kl_mask": "teacher_correct"}) == (
        "DML + leader + attention diversity + teacher-correct leader KL")


def test_a_run_made_before_a_cohort_field_existed_groups_with_the_runs_that_state_it(runs, tmp_path):
    """config.json of a run made before --leader_kl_mask existed has no such key: the run trained
    with the field's default and groups with a run that states it (one group of 2, not 2 of 1)."""
    from ffsd_tf.report import LATER_COHORT_DEFAULTS
    from ffsd_tf.trainer import FFSDConfig

    defaults = {f.name: f.default for f in dataclasses.fields(FFSDConfig)}
    assert LATER_COHORT_DEFAULTS == {k: defaults[k] for k in LATER_COHORT_DEFAULTS}
    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(runs["ffsd1"], old)
    shutil.copytree(runs["ffsd2"], new)
    config = json.loads((old / "config.json").read_text())
    for key in LATER_COHORT_DEFAULTS:
        del config["model"][key]
    (old / "config.json").write_text(json.dumps(config))
    groups = report_json(str(old), str(new))["groups"]
    assert [g["num_runs"] for g in groups] == [2]
