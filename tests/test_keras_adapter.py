"""The Keras private methods FFSD overrides (ffsd_tf/keras_adapter.py) are still what we patched.

Fails after a Keras upgrade that changes any of them: re-read the override against the new Keras
source, then update the fingerprint in ``KERAS_PATCHED``.
"""

import hashlib
import importlib
import inspect

import keras
import pytest

from ffsd_tf.keras_adapter import KERAS_PATCHED, KerasPrivateOverrides
from ffsd_tf.trainer import FFSD


@pytest.mark.parametrize("name", sorted(KERAS_PATCHED))
def test_patched_keras_method_is_unchanged(name):
    module_name, fingerprint = KERAS_PATCHED[name]
    module = importlib.import_module(module_name)
    owners = [c for c in vars(module).values() if inspect.isclass(c) and name in vars(c)]
    assert owners, f"Keras {keras.__version__} no longer defines {name} in {module_name}: re-read keras_adapter.py"
    source = inspect.getsource(vars(owners[0])[name])
    assert hashlib.sha256(source.encode()).hexdigest() == fingerprint, (
        f"Keras {keras.__version__} changed {name}: re-read keras_adapter.py against it, then update KERAS_PATCHED"
    )
    assert name in vars(KerasPrivateOverrides)


@pytest.mark.parametrize("name", sorted(KERAS_PATCHED))
def test_ffsd_uses_the_override_and_keras_still_calls_it(name):
    assert getattr(FFSD, name) is getattr(KerasPrivateOverrides, name)
    assert hasattr(keras.Model, name)  # the hook Keras' fit/evaluate call
