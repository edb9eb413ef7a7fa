"""Flag validation that needs no subprocess: combinations checked against the replica count."""

import pytest
from absl import flags

from ffsd_tf import flags as ffsd_flags
from tests.conftest import ROOT

FLAGS = flags.FLAGS


def test_batch_must_divide_across_replicas(parsed):
    parsed("--batch_size=30", "--epochs=300")
    ffsd_flags.validate(num_replicas=3)  # divisible: fine
    with pytest.raises(ffsd_flags.FlagError, match="not divisible by the 4 replicas"):
        ffsd_flags.validate(num_replicas=4)


def test_jit_compile_is_refused_under_a_strategy(parsed):
    parsed("--jit_compile", "--strategy=mirrored")
    with pytest.raises(ffsd_flags.FlagError, match="jit_compile"):
        ffsd_flags.validate()


def test_weight_schedules_scale_the_lambdas(parsed):
    parsed("--loss_weights=paper", "--lambda_diversity=2e-5", "--lambda_diversity_schedule=linear_warmup:4",
           "--lambda_kl_schedule=piecewise:1=0,3=1")
    w = ffsd_flags.weight_schedules()
    assert w["diversity"](1) == pytest.approx(0.5e-5) and w["diversity"](8) == pytest.approx(2e-5)
    assert w["kl"](2) == 0 and w["kl"](3) == 1
    assert w["fusion"](5) == pytest.approx(10.0) and w["fusion"](1) == pytest.approx(10 * 0.0407622, rel=1e-5)


def test_paper_defaults(parsed):
    parsed()
    f = FLAGS
    assert (f.lr, f.momentum, f.weight_decay, f.fusion_weight_decay, f.decoder_lr, f.temperature) == (0.1, 0.9, 1e-4, 1e-5, 1e-3, 2.0)
    values = ffsd_flags.run_config().loss_weights.values  # the --loss_weights set's (recipe) where not given
    assert (values["diversity"], values["fusion"], values["self_distillation"]) == (1e-5, 10.0, 1000.0)
    assert ffsd_flags.milestones() == [150, 225] and f.epochs == 299 and f.batch_size == 128


FLAGFILES = sorted(__import__("glob").glob(ROOT + "/experiments/**/*.flags", recursive=True))


@pytest.mark.parametrize("flagfile", [f[len(ROOT) + 1 :] for f in FLAGFILES])
def test_every_experiment_flagfile_parses_and_validates(parsed, flagfile, monkeypatch):
    monkeypatch.chdir(ROOT)  # flagfiles include each other by paths relative to the repository root
    parsed(f"--flagfile={flagfile}")
    ffsd_flags.validate()
    from ffsd_tf.networks import available

    assert FLAGS.model in available()
