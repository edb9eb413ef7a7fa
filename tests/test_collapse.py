"""The early KL blow-up is reported (issue 14): one warning line naming the cause and the fix.

A cohort whose mutual KL explodes in the first steps (here forced with --lambda_kl=30 on a tiny
synthetic set) ends epoch 1 with its students at chance; a healthy cohort on the same data
(--lambda_kl=1) must stay silent, and so must a cohort without the mutual KL (the recipe's
--lambda_kl=0) that a far too large learning rate leaves at chance: its KL is large but moved nothing.
"""

import pytest

from tests.conftest import run_cli

COHORT = ["--dataset=synthetic", "--model=resnet8", "--synthetic_train=640", "--synthetic_test=32",
          "--image_size=8", "--batch_size=32", "--epochs=1", "--milestones=", "--verbose=quiet"]
WARNING = "warning: the mutual KL blew up in epoch 1"


@pytest.mark.parametrize("lambda_kl, lr, warns", [("30", "0.1", True), ("1", "0.1", False), ("0", "5", False)])
def test_collapse_warning_fires_only_on_a_blow_up(tmp_path, lambda_kl, lr, warns):
    proc = run_cli(COHORT + [f"--lambda_kl={lambda_kl}", f"--lr={lr}", f"--output_dir={tmp_path / 'run'}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith(WARNING)]
    if warns:
        assert len(lines) == 1
        assert "--lambda_kl=0" in lines[0] and "robust.flags" in lines[0] and "ln 10 = 2.30" in lines[0]
        assert "--lambda_kl_schedule=exp_warmup:5" in lines[0]
    else:
        assert lines == []
