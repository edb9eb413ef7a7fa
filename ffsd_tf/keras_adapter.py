"""Every place ffsd_tf reaches into Keras' private API, in one small mixin (Keras 3.15, TF backend).

``FFSD`` returns running means from its own ``train_step``/``test_step`` and builds every network
and optimizer up front, which two of Keras' private ``Model`` methods get in the way of:

* ``_get_metrics_result_or_logs(logs)``: after each epoch Keras replaces the step's logs with
  ``get_metrics_result()`` whenever the two key sets match. With one student every eval metric
  name is also a train metric name, so that dict (keyed by name) would hold the other phase's
  reset trackers. We keep the step's own logs.
* ``_maybe_symbolic_build(iterator, data_batch)``: Keras first averages an (x, y) batch across
  workers to build the model symbolically, which fails under MultiWorkerMirroredStrategy
  (keras-team/keras#20585). Our model is built at construction, so we skip it there.

and one private ``tf.distribute`` method: ``MultiWorkerMirroredStrategy.extended.
_in_multi_worker_mode()``, Keras' own condition for its cross-worker paths. ``KERAS_PATCHED``
holds a fingerprint of the Keras methods we override; ``tests/test_keras_adapter.py`` fails when a
Keras upgrade changes them, so the overrides are re-read before they silently misbehave.
"""

from __future__ import annotations

import tensorflow as tf

# Keras method -> (module that defines it, sha256 of its source in Keras 3.15.1).
KERAS_PATCHED = {
    "_get_metrics_result_or_logs": (
        "keras.src.trainers.trainer", "1c7ab4a2c8e618681cbebf091de56de691c84dcec0a8e3c9842693613c548cc5"),
    "_maybe_symbolic_build": (
        "keras.src.backend.tensorflow.trainer", "92a504f5eba9b29f81f1bf26180bdd5bf5186b06b7bda426534b90d2d02bc1c2"),
}


def multi_worker(strategy) -> bool:
    """Keras' own condition for its cross-worker fit/evaluate paths (keras-team/keras#20585)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._in_multi_worker_mode()


class KerasPrivateOverrides:
    """Mix in before ``keras.Model``: the two private overrides described in the module docstring."""

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if multi_worker(self.distribute_strategy):
            return
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _get_metrics_result_or_logs(self, logs):
        return logs

    def _step_logs(self, logs):
        """A step's logs as Keras' multi-worker path can average them (reduce(MEAN, axis=0) rejects scalars)."""
        if multi_worker(tf.distribute.get_strategy()):
            return {k: tf.reshape(v, [1]) for k, v in logs.items()}
        return logs
