"""What moves the leader: each of its loss terms' gradient on the leader's variables, at a checkpoint.

    python benchmarks/leader_gradients.py runs/budget/c10_r20_5k_10ep_ffsd_recipe_s0 --batches=8

The leader's loss (Eqs. 5, 13, 14; ``trainer.FFSD.compute_losses``) is CE + w_leader_kl * T^2 KL
(to the fusion classifier) + w_fusion * (attention loss to the fused map + sigma's attention loss +
the self-distillation targets). For the run's newest readable checkpoint, at the loss weights of
its last epoch, on ``--batches`` augmented training batches of its own data (one forward pass per
batch, in training mode, as a training step), this prints per term: the global norm of its
weighted gradient on the leader's role variables (backbone + sigma), and the cosine between that
gradient and the cross-entropy's. Nothing is written; the run directory is only read.

RESULTS.md (budget study) uses it to tell which term makes the leader differ from the network
trained alone: the feature terms' gradients are ~1-2 % of the CE's, the KL's 35-55 %.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def leader_terms(model) -> dict:
    """The leader's terms in this cohort -> the loss weight multiplying each (None: 1), from the
    trainer's table ``ffsd_tf.loss_terms.LOSS_TERMS``."""
    import dataclasses

    from ffsd_tf import loss_terms

    return {f"leader/{t.name}": t.weight for t in loss_terms.terms_of(dataclasses.asdict(model.config), "leader")}


def term_gradients(model, images, labels) -> dict:
    """{term: list of weighted gradients on ``model.role_variables('leader')``} for one batch, plus
    ``"leader/loss"``: the gradient of the leader's whole loss (their sum, up to rounding)."""
    import tensorflow as tf

    variables = model.role_variables("leader")
    with tf.GradientTape(persistent=True) as tape:
        _, terms, _ = model.compute_losses(images, labels, training=True)
    weights = {k: float(v.numpy()) for k, v in model.loss_weight_vars.items()}
    table = leader_terms(model)
    out = {}
    for name in [*table, "leader/loss"]:
        scale = 1.0 if table.get(name) is None else weights[table[name]]
        grads = tape.gradient(terms[name], variables)
        out[name] = [tf.zeros_like(v) if g is None else scale * g for g, v in zip(grads, variables)]
    del tape
    return out


def _flat(grads):
    import tensorflow as tf

    return tf.concat([tf.reshape(g, [-1]) for g in grads], axis=0)


def summarize(per_batch: list[dict]) -> dict:
    """{term: (mean gradient norm, mean cosine with the CE gradient)} over batches."""
    import numpy as np
    import tensorflow as tf

    rows = {}
    for name in per_batch[0]:
        norms, cosines = [], []
        for grads in per_batch:
            g, ce = _flat(grads[name]), _flat(grads["leader/ce"])
            n = float(tf.norm(g))
            norms.append(n)
            cosines.append(float(tf.reduce_sum(g * ce)) / max(n * float(tf.norm(ce)), 1e-30))
        rows[name] = (float(np.mean(norms)), float(np.mean(cosines)))
    return rows


def restore_leader_run(run_dir: str):
    """(cohort, data bundle, checkpoint path) of an FFSD run with a leader and fusion, or None
    after one ``error:`` line on stderr (a damaged run, or one without a leader)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from ffsd_tf import rundir

    try:
        model, _, checkpoint = rundir.restore_model(run_dir)
        if model.leader is None or not model.config.fusion:
            raise rundir.RunDirError(f"{run_dir} has no leader with fusion; pass an FFSD run directory")
        return model, rundir.load_run_data(run_dir), checkpoint
    except rundir.RunDirError as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a training run directory with a leader (FFSD with fusion)")
    parser.add_argument("--batches", type=int, default=8, help="training batches averaged over")
    args = parser.parse_args(argv)
    restored = restore_leader_run(args.run_dir)
    if restored is None:
        return 2
    model, bundle, checkpoint = restored
    epoch = int(model.epoch.numpy())
    weights = model.set_epoch(max(epoch, 1))
    batches = iter(bundle.train_stream(max(epoch - 1, 0)))
    per_batch = [term_gradients(model, *next(batches)[:2]) for _ in range(args.batches)]
    print(f"{checkpoint} (epoch {epoch}; weights {', '.join(f'{k}={weights[k]:g}' for k in model.active_loss_weights)}); "
          f"{args.batches} training batches of {bundle.batch_size}")
    print("\n| term | weighted gradient norm | / CE's | cosine with CE's |\n|---|---:|---:|---:|")
    rows = summarize(per_batch)
    ce = rows["leader/ce"][0]
    for name, (norm, cosine) in rows.items():
        print(f"| {name} | {norm:.4f} | {norm / ce:.3f} | {cosine:+.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
