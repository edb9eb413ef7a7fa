"""Issue 14's budget study: CE, DML, FFSD-paper and FFSD-recipe, 3 seeds, per setting, one run at a time.

    python benchmarks/budget_study.py --settings=c10_r20_5k_10ep,c10_r8_20k_10ep --seeds=0,1,2

Each run is ``python -m ffsd_tf.run --flagfile=experiments/budget_study/settings/<setting>.flags
--flagfile=experiments/budget_study/methods/<method>.flags --seed=S --output_dir=<runs>/<setting>_<method>_sS``
(the exact command is printed). Finished runs (``results.json``) are skipped and killed ones resumed,
so the script can be stopped and restarted. Runs go one after another: two at once on 2 cores
distort every wall time.

``ce_equal`` is the equal-compute row: CE trained for as many epochs as cost the CPU time of an
FFSD-recipe run (``train_cpu_seconds`` in results.json, of the first seed with both runs measured;
milestones scaled with the epochs). It runs once that pair exists. ``quickstart`` is a setting too (experiments/quickstart.flags).
Any file of ``experiments/budget_study/methods/`` is a method (``--methods=ffsd_kl_warmup``: the recipe
before the study, every KL term warmed up and the mutual KL kept).

``--budget=K`` trains every method for K times the setting's epochs (milestones scaled); its runs are
``<setting>_xK_<method>_sS`` (K = 1 keeps the plain names). ``--plateau`` is issue 28's CE plateau search:
CE at K = 1, 2, 4, ... (``--max_budget``) for each seed, stopping once doubling the epochs adds less than
``--plateau_gain`` (0.3) points to the mean final test accuracy over the seeds measured at both budgets;
it prints the table and "CE at its plateau" (the best mean). ``--data_dir`` overrides the setting's.

Then: ``python -m ffsd_tf.report '<runs>/<setting>_*' --baseline='<runs>/<setting>_ce_s*'``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = os.path.join("experiments", "budget_study")
METHODS = ("ce", "ffsd_recipe", "ffsd_paper", "dml", "ce_equal")
SETTINGS = ("c10_r20_5k_10ep", "c10_r8_20k_10ep", "fm_r20_5k_30ep", "c10_r20_5k_30ep")
PLATEAU_GAIN = 0.3  # points: doubling CE's epochs adds less than this -> CE has reached its plateau


def setting_file(setting: str) -> str:
    if setting == "quickstart":
        return os.path.join("experiments", "quickstart.flags")
    return os.path.join(STUDY, "settings", f"{setting}.flags")


def flag_value(path: str, name: str) -> str:
    """The last ``--name=value`` of a flagfile (the study's setting files are flat)."""
    value = None
    with open(os.path.join(ROOT, path)) as f:
        for line in f:
            if line.startswith(f"--{name}="):
                value = line.strip().split("=", 1)[1]
    if value is None:
        raise SystemExit(f"{path} has no --{name}")
    return value


def results(run_dir: str) -> dict | None:
    path = os.path.join(ROOT, run_dir, "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def equal_compute_flags(setting: str, runs: str, seeds=(0, 1, 2)) -> list[str] | None:
    """CE's epochs (and scaled milestones) for the compute of an FFSD-recipe run: the CPU-time ratio
    (``train_cpu_seconds``; wall time stretches when the machine is shared) of the first seed with
    both runs measured, the same for every seed."""
    for seed in seeds:
        ce, ffsd = results(f"{runs}/{setting}_ce_s{seed}"), results(f"{runs}/{setting}_ffsd_recipe_s{seed}")
        if ce and ffsd and ce.get("train_cpu_seconds") and ffsd.get("train_cpu_seconds"):
            break
    else:
        return None
    epochs = int(flag_value(setting_file(setting), "epochs"))
    milestones = [int(m) for m in flag_value(setting_file(setting), "milestones").split(",")]
    factor = ffsd["train_cpu_seconds"] / ce["train_cpu_seconds"]
    new_epochs = max(epochs, round(epochs * factor))
    scaled = sorted({max(1, round(m * new_epochs / epochs)) for m in milestones})
    return [f"--epochs={new_epochs}", f"--milestones={','.join(map(str, scaled))}"]


def budget_flags(setting: str, budget: int) -> list[str]:
    """``--epochs`` and ``--milestones`` of ``budget`` times the setting's (none for 1)."""
    if budget == 1:
        return []
    epochs = int(flag_value(setting_file(setting), "epochs"))
    milestones = [int(m) for m in flag_value(setting_file(setting), "milestones").split(",")]
    return [f"--epochs={epochs * budget}", f"--milestones={','.join(str(m * budget) for m in milestones)}"]


def run_name(setting: str, method: str, seed: int, runs: str, budget: int = 1) -> str:
    return f"{runs}/{setting}{'' if budget == 1 else f'_x{budget}'}_{method}_s{seed}"


def command(setting: str, method: str, seed: int, runs: str, budget: int = 1,
            data_dir: str | None = None) -> list[str] | None:
    out = run_name(setting, method, seed, runs, budget)
    extra = budget_flags(setting, budget)
    if method == "ce_equal":
        if budget != 1:
            raise SystemExit("ce_equal runs at --budget=1 only")
        extra = equal_compute_flags(setting, runs)
        if extra is None:
            return None
    if data_dir:
        extra = [f"--data_dir={data_dir}", *extra]
    method_file = os.path.join(STUDY, "methods", f"{'ce' if method == 'ce_equal' else method}.flags")
    cmd = [sys.executable, "-m", "ffsd_tf.run", f"--flagfile={setting_file(setting)}", f"--flagfile={method_file}",
           *extra, f"--seed={seed}", f"--output_dir={out}", "--verbose=line"]
    if os.path.isdir(os.path.join(ROOT, out)):
        cmd.append("--resume")
    return cmd


def final_accuracy(run_dir: str) -> float | None:
    """The network's final-epoch test accuracy (%) of a finished CE run (``results.json``)."""
    res = results(run_dir)
    if res is None:
        return None
    try:
        return 100.0 * float(res["accuracy"]["student1"]["final"])
    except (KeyError, TypeError, ValueError):
        raise SystemExit(f"{run_dir}/results.json has no accuracy.student1.final; remove the run to redo it")


def run(cmd: list[str]) -> int:
    print(f"[{time.strftime('%H:%M:%S')}] {' '.join(cmd[1:])}", flush=True)
    start = time.time()
    rc = subprocess.call(cmd, cwd=ROOT)
    print(f"[{time.strftime('%H:%M:%S')}] rc={rc} in {(time.time() - start) / 60:.1f} min", flush=True)
    return rc


def plateau(setting: str, seeds: list[int], runs: str, max_budget: int, gain: float, data_dir) -> int:
    """Issue 28's CE plateau search (see the module docstring); returns the plateau budget K."""
    import statistics

    means, budget = {}, 1
    while True:
        accs = []
        for seed in seeds:
            out = run_name(setting, "ce", seed, runs, budget)
            if results(out) is None:
                run(command(setting, "ce", seed, runs, budget, data_dir))
            acc = final_accuracy(out)
            if acc is None:
                raise SystemExit(f"{out} did not finish; run the same command again to resume it")
            accs.append(acc)
        means[budget] = statistics.mean(accs)
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        epochs = int(flag_value(setting_file(setting), "epochs")) * budget
        print(f"plateau {setting}: CE x{budget} ({epochs} epochs) final test acc {means[budget]:.2f} ± {spread:.2f} "
              f"(seeds {','.join(map(str, seeds))})", flush=True)
        if budget > 1 and means[budget] - means[budget // 2] < gain:
            break
        if budget * 2 > max_budget:
            print(f"plateau {setting}: --max_budget={max_budget} reached before the plateau", flush=True)
            break
        budget *= 2
    best = max(means, key=means.get)
    print(f"plateau {setting}: CE at its plateau = x{best} ({means[best]:.2f}); stopped at x{budget}", flush=True)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--runs", default="runs/budget")
    parser.add_argument("--budget", type=int, default=1, help="K x the setting's epochs and milestones")
    parser.add_argument("--plateau", action="store_true", help="CE's plateau search (issue 28) instead")
    parser.add_argument("--max_budget", type=int, default=16)
    parser.add_argument("--plateau_gain", type=float, default=PLATEAU_GAIN)
    parser.add_argument("--data_dir", default=None, help="overrides the setting's --data_dir")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    if args.budget < 1:
        raise SystemExit("--budget must be a positive integer")
    if args.plateau:
        for setting in args.settings.split(","):
            plateau(setting, seeds, args.runs, args.max_budget, args.plateau_gain, args.data_dir)
        return 0
    for setting in args.settings.split(","):
        # ce_equal waits for a measured pair: a second pass runs the ones the first had to skip.
        passes = [(seed, method) for seed in seeds for method in methods]
        passes += [(seed, "ce_equal") for seed in seeds if "ce_equal" in methods]
        for seed, method in passes:
            out = run_name(setting, method, seed, args.runs, args.budget)
            if results(out) is not None:
                continue
            cmd = command(setting, method, seed, args.runs, args.budget, args.data_dir)
            if cmd is None:
                print(f"skip {out}: needs a {setting}_ce and _ffsd_recipe pair with CPU times first", flush=True)
                continue
            run(cmd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
