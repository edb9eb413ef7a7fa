"""PyTorch-exact SGD and Adam as Keras 3 optimizers.

The FFSD authors' code trains the students with
``SGD(lr 0.1, momentum 0.9, nesterov, weight_decay 1e-4)`` and the SD
(self-distillation) modules with ``Adam(lr 1e-3, weight_decay 1e-4)``, both
``torch.optim``.  Keras' built-ins differ from those in ways that matter here:

* **Weight decay.**  Torch's ``weight_decay`` is *coupled* L2: ``wd * w`` is
  added to the gradient before momentum / Adam moments see it.  Keras'
  ``weight_decay`` is *decoupled* (``w -= lr * wd * w`` after the step, i.e.
  SGDW / AdamW).  Ours is coupled, applied to every variable the optimizer is
  given (``exclude_from_weight_decay`` does not apply to it), and stored as
  ``self.l2`` so the base class' decoupled decay stays off
  (``self.weight_decay`` is ``None``).
* **SGD momentum buffer.**  Keras keeps ``-lr * grad`` inside its velocity, so
  after a learning-rate drop the old, larger lr still sits in the velocity.
  Torch keeps an lr-free buffer ``buf = momentum * buf + g`` and multiplies by
  the current lr at update time.  Ours does the latter, so it is exact across
  MultiStepLR drops.
* **Adam epsilon.**  Keras adds ``epsilon`` (default 1e-7) to the raw
  ``sqrt(v)`` and folds the bias corrections into the lr, so in torch's terms
  its eps is ``eps / sqrt(1 - beta_2**t)``, large early in training.  Torch
  adds eps (default 1e-8) to the bias-corrected ``sqrt(v) / sqrt(1 -
  beta_2**t)``.  Ours does the latter.
* **Scalars.**  ``1 - beta`` is formed on the host in float64 as torch does
  (``1 - float32(0.999)`` is off by 1.3e-5), and the bias corrections
  ``1 - beta**t`` as ``-expm1(t * log(beta))``, accurate in float32.

Both follow the standard Keras pattern (``build`` / ``update_step`` /
``get_config``), so they work eagerly, in ``tf.function`` with or without
``jit_compile``, under ``tf.distribute`` strategies, inside
``keras.optimizers.LossScaleOptimizer``, and take a float or a
``LearningRateSchedule`` as ``learning_rate``.
"""
import math

import keras
from keras import ops

__all__ = ["TorchSGD", "TorchAdam", "paper_optimizers"]


def _const(x, dtype):
    """Python float -> tensor of ``dtype`` without a float32 detour (which
    ``ops.cast(0.999, "float64")`` takes)."""
    return ops.convert_to_tensor(x, dtype=dtype)


class _TorchOptimizer(keras.optimizers.Optimizer):
    """Shared plumbing: coupled L2 stored as ``l2``, base decay disabled."""

    def __init__(self, learning_rate, weight_decay, name, **kwargs):
        super().__init__(learning_rate=learning_rate, weight_decay=None,
                         name=name, **kwargs)
        weight_decay = float(weight_decay or 0.0)
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.l2 = weight_decay

    def _coupled_grad(self, gradient, variable):
        g = ops.cast(gradient, variable.dtype)
        if self.l2:
            g = ops.add(g, ops.multiply(_const(self.l2, variable.dtype),
                                        variable))
        return g

    def get_config(self):
        config = super().get_config()
        config["weight_decay"] = self.l2  # ours (coupled), not Keras' decoupled
        return config


@keras.saving.register_keras_serializable(package="ffsd_tf")
class TorchSGD(_TorchOptimizer):
    """``torch.optim.SGD`` (dampening 0) as a Keras optimizer.

    Per variable ``w`` with gradient ``grad``::

        g = grad + weight_decay * w          # coupled L2
        buf = momentum * buf + g             # buf starts at 0 (= torch's buf=g)
        g = g + momentum * buf if nesterov else buf
        w = w - lr * g

    Differs from ``keras.optimizers.SGD``: coupled L2 instead of decoupled
    decay, and an lr-free momentum buffer (Keras stores ``-lr * g`` in its
    velocity, which is not torch-equivalent once the lr changes).
    Authors' code: SGD(lr 0.1, momentum 0.9, nesterov, weight_decay 1e-4).
    """

    def __init__(self, learning_rate=0.1, momentum=0.9, nesterov=True,
                 weight_decay=0.0, name=None, **kwargs):
        super().__init__(learning_rate, weight_decay, name, **kwargs)
        momentum = float(momentum)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if nesterov and momentum == 0.0:
            raise ValueError("nesterov=True requires momentum > 0 (as torch)")
        self.momentum = momentum
        self.nesterov = bool(nesterov)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = []
        if self.momentum:
            self.momentums = self.add_optimizer_variables(variables, "momentum")

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = self._coupled_grad(gradient, variable)
        if self.momentum:
            buf = self.momentums[self._get_variable_index(variable)]
            mom = _const(self.momentum, variable.dtype)
            new_buf = ops.add(ops.multiply(buf, mom), g)
            self.assign(buf, new_buf)
            g = ops.add(g, ops.multiply(mom, new_buf)) if self.nesterov else new_buf
        self.assign_sub(variable, ops.multiply(lr, g))

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, nesterov=self.nesterov)
        return config


def _bias_correction(beta, t):
    """``1 - beta**t`` as ``-expm1(t * log(beta))``: float32-accurate."""
    if beta == 0.0:
        return ops.ones_like(t)
    return -ops.expm1(t * math.log(beta))


@keras.saving.register_keras_serializable(package="ffsd_tf")
class TorchAdam(_TorchOptimizer):
    """``torch.optim.Adam`` (amsgrad False; not AdamW) as a Keras optimizer.

    Per variable ``w`` with gradient ``grad`` at step ``t = 1, 2, ...``::

        g = grad + weight_decay * w          # coupled L2
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g**2
        w = w - lr / (1 - beta_1**t) * m / (sqrt(v) / sqrt(1 - beta_2**t) + eps)

    Differs from ``keras.optimizers.Adam``: coupled L2 instead of decoupled
    decay, and eps added to the bias-corrected ``sqrt(v)`` (torch) rather than
    the raw one (Keras), default 1e-8 as torch.
    Authors' code: SD modules Adam(lr 1e-3, weight_decay 1e-4).
    """

    def __init__(self, learning_rate=1e-3, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, weight_decay=0.0, name=None, **kwargs):
        super().__init__(learning_rate, weight_decay, name, **kwargs)
        for key, beta in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0.0 <= float(beta) < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {beta}")
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._momentums, self._velocities = self.add_optimizer_variables(
            variables, ["momentum", "velocity"])

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        g = self._coupled_grad(gradient, variable)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]

        # Bias corrections 1 - beta**t, accurate in float32.
        fdtype = "float64" if dtype == "float64" else "float32"
        t = ops.cast(self.iterations + 1, fdtype)
        bc1 = _bias_correction(self.beta_1, t)
        bc2 = _bias_correction(self.beta_2, t)
        step_size = ops.cast(ops.cast(learning_rate, fdtype) / bc1, dtype)
        bc2_sqrt = ops.cast(ops.sqrt(bc2), dtype)

        # 1 - beta on the host, as torch does (1 - float32(0.999) is off by
        # 1.3e-5 relative).
        new_m = ops.add(m, ops.multiply(ops.subtract(g, m),
                                        _const(1.0 - self.beta_1, dtype)))
        new_v = ops.add(ops.multiply(v, _const(self.beta_2, dtype)),
                        ops.multiply(ops.square(g),
                                     _const(1.0 - self.beta_2, dtype)))
        self.assign(m, new_m)
        self.assign(v, new_v)
        denom = ops.add(ops.divide(ops.sqrt(new_v), bc2_sqrt),
                        _const(self.epsilon, dtype))
        self.assign_sub(variable,
                        ops.multiply(step_size, ops.divide(new_m, denom)))

    def get_config(self):
        config = super().get_config()
        config.update(beta_1=self.beta_1, beta_2=self.beta_2,
                      epsilon=self.epsilon)
        return config


def paper_optimizers(roles, *, lr=0.1, decoder_lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-4,
                     fusion_weight_decay=1e-5, decoder_weight_decay=1e-4, milestones=(), gamma=0.1,
                     steps_per_epoch=None, warmup_epochs=0) -> dict:
    """The authors' optimizer for each of ``roles`` (FFSD's "students", "leader", "fusion", "decoders").

    SGD(lr, momentum 0.9, nesterov, coupled L2 1e-4) for the common students and the leader (with
    sigma), the same with L2 1e-5 for the fusion module, Adam(1e-3, L2 1e-4) for the decoders. With
    ``steps_per_epoch`` every learning rate follows ``schedules.MultiStepLR`` (``milestones``,
    ``gamma``, ``warmup_epochs``; the CLI's ``--lr``, ``--milestones``...); without it the rates are
    constant and ``milestones`` must be empty.
    """
    from ffsd_tf.schedules import MultiStepLR

    if steps_per_epoch is None and (list(milestones) or warmup_epochs):
        raise ValueError("milestones and warmup_epochs need steps_per_epoch (the optimizer counts steps)")

    def rate(base):
        if steps_per_epoch is None:
            return float(base)
        return MultiStepLR(base, list(milestones), gamma, steps_per_epoch=steps_per_epoch, warmup_epochs=warmup_epochs)

    def sgd(wd, name):
        return TorchSGD(rate(lr), momentum=momentum, nesterov=nesterov, weight_decay=wd, name=name)

    made = {
        "students": lambda: sgd(weight_decay, "students_sgd"),
        "leader": lambda: sgd(weight_decay, "leader_sgd"),
        "fusion": lambda: sgd(fusion_weight_decay, "fusion_sgd"),
        "decoders": lambda: TorchAdam(rate(decoder_lr), weight_decay=decoder_weight_decay, name="decoders_adam"),
    }
    unknown = [r for r in roles if r not in made]
    if unknown:
        raise ValueError(f"unknown roles {unknown}; FFSD's roles are {list(made)}")
    return {r: made[r]() for r in roles}
