"""Property-based fuzzing of the exported leader's serving paths (hypothesis).

One small leader (the test_export cohort, trained one epoch) is exported once with the SavedModel,
fp32 and int8 TFLite files. Hypothesis then sends arrays of random rank (0-5), dims (0, 1, the
right and wrong H, W, C, ...), dtypes (float32, float64, int32, uint8, bool, str) and values (pixels,
NaN, +-Inf, +-3e38, negatives, 256, ...) to

* the loaded SavedModel's ``serving_default`` and ``serving_uint8``, both as a ``tf.Tensor`` of the
  array's own dtype (what TF Serving hands the graph) and as the NumPy array (Python's conversion);
* ``export.tflite.TFLiteClassifier`` (the product's runner) for the fp32 and the int8 file;
* the raw LiteRT interpreter (``resize_tensor_input(strict=True)``, ``set_tensor``, ``invoke``).

Each call runs in a worker process, so a hard crash (abort, segfault) fails the example instead of
killing pytest. The properties: a call either returns finite probabilities of shape ``[n, K]`` whose
rows sum to 1 (classes/scores consistent), or raises a clear exception (a known type whose message
names the input, the expected shape/dtype or the conversion); an input of the right shape and
dtype with finite pixels is always answered, an empty batch included; NaN/Inf pixels are refused,
never answered with NaN (see docs/guarantees.md for what each path promises). ``FFSD_FUZZ_EXAMPLES``
sets the examples per property; ``FFSD_FUZZ_RANDOM=1`` draws new examples instead of the fixed,
derandomised ones.
"""

import multiprocessing
import os
import re
import types
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from tests.test_export import CONFIG, IMAGE_SHAPE, K, export_args, normalise, synthetic

H, W, C = IMAGE_SHAPE
EXAMPLES = int(os.environ.get("FFSD_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=os.environ.get("FFSD_FUZZ_RANDOM") != "1",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
CLEAR = re.compile(r"images|expected|shape|dtype|convert|finite|NaN|Inf|pixels", re.IGNORECASE)
TOLERANCE = {"fp32": 1e-4, "int8": 0.05}  # int8 probabilities are multiples of 1/256


# ------------------------------------------------------------------------------------ worker process
_CACHE = {}


def _load(kind, path):
    if (kind, path) not in _CACHE:
        if kind == "savedmodel":
            import tensorflow as tf

            _CACHE[kind, path] = tf.saved_model.load(path)
        elif kind == "runner":
            from ffsd_tf.export.tflite import TFLiteClassifier

            _CACHE[kind, path] = TFLiteClassifier(path, num_threads=1)
        else:
            from ai_edge_litert.interpreter import Interpreter

            interpreter = Interpreter(model_path=path, num_threads=1)
            interpreter.allocate_tensors()
            _CACHE[kind, path] = interpreter
    return _CACHE[kind, path]


def _serve(target, path, array, mode):
    """One call, in the worker: ("ok", {name: array}) or ("error", exception type, message)."""
    try:
        if target in ("serving_default", "serving_uint8"):
            import tensorflow as tf

            fn = _load("savedmodel", path).signatures[target]
            out = fn(images=tf.constant(array) if mode == "tensor" else array)
            return "ok", {k: v.numpy() for k, v in out.items()}
        if target == "runner":
            return "ok", {"probabilities": _load("runner", path).predict(array, batch_size=mode)}
        interpreter = _load("raw", path)
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        interpreter.resize_tensor_input(inp["index"], list(array.shape), strict=True)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], array)
        interpreter.invoke()
        return "ok", {"probabilities": interpreter.get_tensor(out["index"])}
    except Exception as e:  # noqa: BLE001 - the outcome is what is tested
        return "error", type(e).__name__, str(e)[:3000]


class Worker:
    """A one-process pool; a crash of the process is an outcome ("crash"), and the next call gets a new one."""

    def __init__(self):
        self._pool = None

    def __call__(self, *args):
        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        try:
            return self._pool.submit(_serve, *args).result(timeout=300)
        except BrokenProcessPool:
            self._pool = None
            return ("crash",)

    def close(self):
        if self._pool is not None:
            self._pool.shutdown()


# ------------------------------------------------------------------------------------ fixtures
class Served(types.SimpleNamespace):
    def __repr__(self):  # hypothesis prints the arguments of a falsifying example
        return f"<exported leader {self.version}>"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The exported leader (SavedModel, fp32, int8) and a worker that calls it."""
    import keras

    from ffsd_tf import export
    from ffsd_tf.trainer import FFSD

    keras.utils.set_random_seed(0)
    train_x, train_y = synthetic(256, seed=1)
    eval_x, eval_y = synthetic(64, seed=2)
    model = FFSD(CONFIG)
    model.compile({role: keras.optimizers.SGD(0.05, momentum=0.9) for role in model.active_roles})
    model.fit(normalise(train_x), train_y, batch_size=64, epochs=1, verbose=0)
    t = types.SimpleNamespace(train_x=train_x, eval_x=eval_x, eval_y=eval_y)
    report = export.export_leader(model.deployable_leader(), export_dir=str(tmp_path_factory.mktemp("fuzz")),
                                  formats=("savedmodel", "fp32", "int8"), **export_args(t, latency_repeats=1))
    worker = Worker()
    version = report["path"]
    files = {fmt: os.path.join(version, "tflite", f"leader_{fmt}.tflite") for fmt in ("fp32", "int8")}
    probe = eval_x[:5]
    baseline = {fmt: worker("runner", files[fmt], probe, 64) for fmt in files}
    for fmt, outcome in baseline.items():
        assert outcome[0] == "ok", outcome
    yield Served(call=worker, version=version, files=files, probe=probe,
                 baseline={f: o[1]["probabilities"] for f, o in baseline.items()})
    worker.close()


# ------------------------------------------------------------------------------------ strategies
SPECIAL = [np.nan, np.nan, np.inf, -np.inf, 3.0e38, -3.0e38, 1e30, -1e30, 1e300, -1e-45, -1.0, -300.0, 256.0, 1e6, 0.0,
           255.0, 2.0**31, -2.0**31]
DTYPES = ["float32", "float32", "float64", "int32", "uint8", "uint8", "bool", "str"]


@st.composite
def shapes(draw):
    kind = draw(st.sampled_from(["valid", "valid", "near", "any"]))
    if kind == "valid":
        return (draw(st.integers(0, 4)), H, W, C)
    if kind == "near":
        return (draw(st.sampled_from([0, 1, 2])), draw(st.sampled_from([0, 1, 8, H - 1, H, H + 1, 2 * H])),
                draw(st.sampled_from([0, 1, 8, W, W + 1])), draw(st.sampled_from([0, 1, 3, 4])))
    shape = [draw(st.sampled_from([0, 1, 2, 3, H])) for _ in range(draw(st.integers(0, 5)))]
    while np.prod(shape, dtype=np.int64) > 4 * H * W * C:
        shape[shape.index(max(shape))] = 2
    return tuple(shape)


@st.composite
def pixel_arrays(draw):
    shape = draw(shapes())
    dtype = draw(st.sampled_from(DTYPES))
    n = int(np.prod(shape, dtype=np.int64))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    base = draw(st.sampled_from(["pixels", "constant", "wide"]))
    if base == "pixels":
        values = rng.integers(0, 256, n).astype(np.float64)
    elif base == "constant":
        values = np.full(n, draw(st.sampled_from([0.0, 127.0, 255.0, -1.0, 3.0e38])))
    else:
        values = rng.normal(0, 1e4, n)
    for _ in range(draw(st.integers(0, 3)) if n else 0):
        values[draw(st.integers(0, n - 1))] = draw(st.sampled_from(SPECIAL))
    values = values.reshape(shape)
    with np.errstate(all="ignore"):
        if dtype in ("float32", "float64"):
            return values.astype(dtype)
        if dtype == "int32":
            return np.clip(np.nan_to_num(values), -2**31, 2**31 - 1).astype(np.int32)
        if dtype == "uint8":
            return np.clip(np.nan_to_num(values), 0, 255).astype(np.uint8)
        if dtype == "bool":
            return values > 127
    junk = draw(st.sampled_from(["", "abc", "12x", None]))
    text = np.vectorize(lambda v: f"{v:g}")(values) if values.size else values.astype(str)
    if junk is not None and text.size:
        text = text.astype(object)
        text.flat[draw(st.integers(0, text.size - 1))] = junk
    return text.astype(str)


# ------------------------------------------------------------------------------------ checks
def describe(array) -> str:
    with np.printoptions(threshold=8, edgeitems=2):
        return f"{array.dtype} {list(array.shape)}: {np.ravel(array)[:6]}"


def as_float(array):
    """The array as float64 pixels, or None if it does not convert (strings that are not numbers)."""
    try:
        with np.errstate(all="ignore"):
            return np.asarray(array, np.float64)
    except (TypeError, ValueError):
        return None


def right_shape(array) -> bool:
    return array.ndim == 4 and tuple(array.shape[1:]) == IMAGE_SHAPE


def assert_probabilities(probs, n, tolerance, context):
    assert probs.shape == (n, K), (probs.shape, context)
    assert np.isfinite(probs).all(), ("non-finite probabilities", probs, context)
    assert np.all(probs >= 0) and np.allclose(probs.sum(-1), 1, atol=tolerance), (probs.sum(-1), context)


def record(outcome, array):
    """Hypothesis statistics (pytest --hypothesis-show-statistics): what was sent, what came back."""
    pixels = as_float(array)
    values = "non-numeric" if pixels is None else ("finite" if np.isfinite(pixels).all() else "NaN/Inf")
    shape = "right shape" if right_shape(array) else f"rank {array.ndim}, other shape"
    error = f" -> {outcome[1]}" if outcome[0] == "error" else ""
    event(f"{outcome[0]}: {array.dtype.kind} {shape}, {values}{error}")


def assert_clear_error(outcome, kinds, context):
    assert outcome[0] != "crash", f"the process crashed on {context}"
    _, kind, message = outcome
    assert kind in kinds, (kind, message[:500], context)
    assert CLEAR.search(message), ("unclear error", kind, message[:500], context)


def _pixels(shape=(2, H, W, C), dtype=np.float32, special=None, fill=None):
    array = np.random.default_rng(0).integers(0, 256, shape).astype(dtype)
    if fill is not None:
        array[...] = fill
    if special is not None and array.size:
        array.flat[0] = special
    return array


NAN, INF, EMPTY = _pixels(special=np.nan), _pixels(special=-np.inf), _pixels((0, H, W, C))
HUGE = np.random.default_rng(1).choice([-3e38, 3e38], (2, H, W, C)).astype(np.float32)


# ------------------------------------------------------------------------------------ properties
@FUZZ
@given(array=pixel_arrays(), signature=st.sampled_from(["serving_default", "serving_uint8"]),
       mode=st.sampled_from(["tensor", "numpy"]))
@example(array=NAN, signature="serving_default", mode="tensor")
@example(array=INF, signature="serving_default", mode="numpy")
@example(array=EMPTY, signature="serving_default", mode="tensor")
@example(array=EMPTY.astype(np.uint8), signature="serving_uint8", mode="tensor")
@example(array=HUGE, signature="serving_default", mode="tensor")
@example(array=_pixels((H, W, C)), signature="serving_default", mode="tensor")
@example(array=_pixels(dtype=np.float64), signature="serving_default", mode="tensor")
@example(array=_pixels(dtype=np.uint8).astype(str), signature="serving_uint8", mode="tensor")
def test_savedmodel_answers_with_probabilities_or_refuses_clearly(served, array, signature, mode):
    context = f"{signature}({mode} {describe(array)})"
    outcome = served.call(signature, served.version, array, mode)
    record(outcome, array)
    assert outcome[0] != "crash", f"the process crashed on {context}"
    expected_dtype = np.float32 if signature == "serving_default" else np.uint8
    pixels = as_float(array)
    finite = pixels is not None and bool(np.isfinite(pixels.astype(np.float32)).all())
    typed = mode == "tensor" and array.dtype == expected_dtype
    if outcome[0] == "error":
        assert_clear_error(outcome, ("InvalidArgumentError", "TypeError", "ValueError"), context)
        # A tensor of the signature's dtype and shape with finite pixels is answered, an empty batch included.
        assert not (typed and right_shape(array) and finite), ("refused a valid request", outcome, context)
        return
    outputs = outcome[1]
    assert right_shape(array), ("answered a request of the wrong shape", context)
    assert not mode == "tensor" or array.dtype == expected_dtype, ("answered a tensor of another dtype", context)
    if signature == "serving_default":
        assert finite, ("answered NaN/Inf pixels instead of refusing them", outputs["probabilities"], context)
    n = len(array)
    assert_probabilities(outputs["probabilities"], n, 1e-4, context)
    k = min(5, K)
    assert outputs["classes"].shape == outputs["scores"].shape == outputs["class_names"].shape == (n, k), context
    assert np.all((outputs["classes"] >= 0) & (outputs["classes"] < K)), context
    np.testing.assert_allclose(
        outputs["scores"], np.take_along_axis(outputs["probabilities"], outputs["classes"].astype(np.int64), -1),
        atol=1e-6, err_msg=context)


@FUZZ
@given(array=pixel_arrays(), fmt=st.sampled_from(["fp32", "int8"]), batch_size=st.sampled_from([1, 3, 64]))
@example(array=NAN, fmt="fp32", batch_size=64)
@example(array=NAN, fmt="int8", batch_size=64)
@example(array=INF, fmt="fp32", batch_size=1)
@example(array=EMPTY, fmt="fp32", batch_size=64)
@example(array=EMPTY, fmt="int8", batch_size=64)
@example(array=HUGE, fmt="fp32", batch_size=64)
@example(array=_pixels((H, W, C)), fmt="int8", batch_size=64)
def test_tflite_classifier_answers_with_probabilities_or_refuses_clearly(served, array, fmt, batch_size):
    context = f"TFLiteClassifier({fmt}).predict({describe(array)}, batch_size={batch_size})"
    outcome = served.call("runner", served.files[fmt], array, batch_size)
    record(outcome, array)
    assert outcome[0] != "crash", f"the process crashed on {context}"
    pixels = as_float(array)
    numeric = array.dtype.kind in "biuf"
    valid = right_shape(array) and numeric and bool(np.isfinite(pixels).all())
    if outcome[0] == "error":
        assert_clear_error(outcome, ("ValueError", "TypeError"), context)
        assert not valid, ("refused valid pixels", outcome, context)
        # An error leaves the runner usable: the same answer as before for a fixed batch.
        again = served.call("runner", served.files[fmt], served.probe, 64)
        assert again[0] == "ok", ("the runner is unusable after an error", again, context)
        np.testing.assert_allclose(again[1]["probabilities"], served.baseline[fmt], atol=1e-6, err_msg=context)
        return
    assert right_shape(array), ("answered an input of the wrong shape", context)
    assert pixels is not None and np.isfinite(pixels).all(), ("answered NaN/Inf pixels", context)
    assert_probabilities(outcome[1]["probabilities"], len(array), TOLERANCE[fmt], context)


@FUZZ
@given(array=pixel_arrays(), fmt=st.sampled_from(["fp32", "int8"]))
@example(array=NAN, fmt="fp32")
@example(array=EMPTY, fmt="fp32")
@example(array=EMPTY.astype(np.uint8), fmt="int8")
@example(array=_pixels(), fmt="fp32")
@example(array=_pixels(dtype=np.uint8), fmt="int8")
@example(array=_pixels((2, 8, 8, 3)), fmt="fp32")
def test_raw_litert_interpreter_never_crashes_and_answers_valid_input(served, array, fmt):
    """The files themselves (no runner): strict resizes and ``set_tensor`` refuse other shapes and
    dtypes; valid input is answered. They do not check values: NaN pixels give NaN (fp32)."""
    context = f"raw LiteRT {fmt}: resize(strict) + set_tensor({describe(array)}) + invoke"
    outcome = served.call("raw", served.files[fmt], array, None)
    record(outcome, array)
    assert outcome[0] != "crash", f"the process crashed on {context}"
    expected_dtype = np.float32 if fmt == "fp32" else np.uint8
    typed = array.dtype == expected_dtype and right_shape(array)
    if outcome[0] == "error":
        assert outcome[1] in ("ValueError", "RuntimeError"), (outcome, context)
        assert not (typed and len(array) > 0 and np.isfinite(array).all()), ("refused valid input", outcome, context)
        return
    assert typed, ("set_tensor accepted another shape or dtype", context)
    probs = outcome[1]["probabilities"]
    if fmt == "int8":
        probs = probs.astype(np.float32) / 256  # output scale 1/256, zero point 0
    if np.isfinite(array).all():
        assert_probabilities(probs, len(array), TOLERANCE[fmt], context)
    else:
        assert probs.shape == (len(array), K), context
