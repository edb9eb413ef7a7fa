"""The progress display: a redrawn bar on a terminal, one line per epoch anywhere else (issue 15)."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from ffsd_tf.callbacks import CompactProgress
from tests.conftest import ROOT, child_env


class Terminal(io.StringIO):
    def isatty(self):
        return True


def drive(progress: CompactProgress, epochs=2, steps=3) -> str:
    for epoch in range(epochs):
        progress.on_epoch_begin(epoch)
        for step in range(steps):
            progress.on_train_batch_end(step, {"loss": 1.0, "leader/acc": 0.5})
        progress.on_epoch_end(epoch, {"loss": 1.0, "leader/acc": 0.5, "val_leader/acc": 0.4})
    return progress.stream.getvalue()


@pytest.mark.parametrize(
    "stream, mode, redraws",
    [
        (Terminal, "auto", True),
        (io.StringIO, "auto", False),  # not a terminal: one line per epoch
        (io.StringIO, "bar", True),  # --verbose overrides
        (Terminal, "line", False),
    ],
)
def test_auto_mode_follows_the_stream(stream, mode, redraws):
    text = drive(CompactProgress(2, 3, mode, stream=stream()))
    assert ("\r" in text) == redraws
    assert [line for line in text.replace("\r", "\n").splitlines() if line.startswith("Epoch 2/2")][-1].endswith(
        "leader/acc=0.5000")
    if not redraws:
        assert [line.split(" ")[0:2] for line in text.splitlines() if line.startswith("Epoch")] == [
            ["Epoch", "1/2"], ["Epoch", "2/2"]]


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="progress mode must be one of auto, bar, line, quiet"):
        CompactProgress(1, 1, "fancy")


def test_cli_output_to_a_pipe_has_one_line_per_epoch_and_no_redraws(tmp_path):
    env = child_env()
    proc = subprocess.run(
        [sys.executable, "-m", "ffsd_tf.run", "--dataset=synthetic", "--synthetic_classes=4", "--synthetic_train=64",
         "--synthetic_test=32", "--image_size=8", "--model=resnet8", "--batch_size=16", "--epochs=2",
         "--milestones=", f"--output_dir={tmp_path / 'run'}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\r" not in proc.stdout
    epochs = [line for line in proc.stdout.splitlines() if line.startswith("Epoch ")]
    assert [line.split(" ")[1] for line in epochs] == ["1/2", "2/2"], proc.stdout
