"""The leader as a TF Serving SavedModel: raw pixels in, probabilities and top-k classes out.

The exported object is a bare ``tf.Module`` that tracks **only the leader's variables** (as a flat
list, the way ``keras.export.ExportArchive`` does), a lookup table that maps class indices to
names and that is initialised from the asset ``assets/class_names.txt``, and the serving
functions. The Keras model itself is captured by the functions' closures and is not part of the
object graph, so nothing else of the FFSD cohort (students, fusion, sigma, decoders) can leak in.

Signatures (both with a variable batch size and a fixed ``H, W, C``):

``serving_default``
    ``images``: float32 ``[batch, H, W, C]``, RGB pixels 0..255 (NHWC, not normalised).
``serving_uint8``
    ``images``: uint8 ``[batch, H, W, C]``, the same pixels as bytes.

``serving_bytes`` (square inputs, ``H == W``)
    ``images``: string ``[batch]``, each an encoded image file (JPEG, PNG, BMP or GIF; any size,
    grayscale, RGB or with alpha), as a client holds it (TF Serving's REST API carries it as
    ``{"b64": ...}``). Each is decoded, resized and given the model's channels by exactly the
    rules of training on a folder (``ffsd_tf.data.images.load_image``: bilinear with
    antialiasing, rounded to uint8; alpha dropped; gray repeated to RGB), in the graph, then goes
    the ``serving_uint8`` path. A string that is not such an image, an empty one, or one whose
    header states more than ``images.MAX_IMAGE_PIXELS`` pixels fails that request
    (``InvalidArgumentError``; TF Serving answers 400) and nothing else.

All three return ``probabilities`` float32 ``[batch, K]``, ``classes`` int32 ``[batch, k]`` (top-k class
indices, most likely first), ``scores`` float32 ``[batch, k]`` (their probabilities) and
``class_names`` string ``[batch, k]``. The training normalisation ``(pixels / 255 - mean) / std``
runs inside the graph. A tensor of another rank, spatial size or channel count is refused by an
``EnsureShape`` op at the graph's input (``InvalidArgumentError``: "Shape of tensor images
[2,8,8,3] is not compatible with expected shape [?,16,16,3]"; TF Serving answers 400
INVALID_ARGUMENT). That op is what protects the server: neither a loaded signature nor TF
Serving checks the shape before running the graph, and without it a rank-3 tensor aborts the
process and a smaller image yields confident garbage. A string (or any other dtype) is refused
by the signature's dtype.

Batch policy: one request holds at most ``MAX_BATCH`` (4096) images; a larger batch is refused
in the graph (``InvalidArgumentError``: "batch of N images is over the SavedModel's maximum of
4096; split the request"; TF Serving answers 400) before the network runs, so one request cannot
take the server's memory (80,000 CIFAR images in one call needed 2.1 GB). Clients split larger
sets into requests of at most ``MAX_BATCH``.
"""

from __future__ import annotations

import os
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from ffsd_tf.data import images as image_files

DEFAULT_SIGNATURE = "serving_default"
UINT8_SIGNATURE = "serving_uint8"
BYTES_SIGNATURE = "serving_bytes"
INPUT_NAME = "images"
OUTPUT_NAMES = ("probabilities", "classes", "scores", "class_names")
CLASS_NAMES_ASSET = "class_names.txt"
MAX_BATCH = 4096  # images per request; larger batches are refused in the graph (see the module doc)


def normalize(pixels: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
    """Training's normalisation: ``(pixels / 255 - mean) / std`` per channel, float32."""
    x = tf.cast(pixels, tf.float32) / 255.0
    return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def write_class_names(path: str, class_names: Sequence[str]) -> None:
    """One class name per line, line i = class index i (UTF-8)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(f"{name}\n" for name in class_names))


class LeaderServing(tf.Module):
    """What the SavedModel holds: the leader's variables, the class-name table, the functions.

    ``leader``: a functional ``keras.Model`` mapping *normalised* float32 ``[B, H, W, C]`` images
    to logits ``[B, K]``. ``class_names_file``: a text file with the ``K`` class names, one a
    line; it becomes the SavedModel's asset.
    """

    def __init__(
        self,
        leader: keras.Model,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        image_shape: Sequence[int],
        class_names_file: str,
        num_classes: int,
        top_k: int = 5,
    ):
        super().__init__(name="leader_serving")
        h, w, c = (int(d) for d in image_shape)
        mean = [float(m) for m in mean]
        std = [float(s) for s in std]
        k = int(min(top_k, num_classes))
        # Only the leader's variables are tracked; the Keras objects stay in the closures below.
        self.leader_variables = [getattr(v, "value", v) for v in leader.weights]
        self.class_names_asset = tf.saved_model.Asset(class_names_file)
        self.class_table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                self.class_names_asset,
                key_dtype=tf.int64,
                key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
                value_dtype=tf.string,
                value_index=tf.lookup.TextFileIndex.WHOLE_LINE,
            ),
            default_value="",
        )
        shape = [None, h, w, c]

        def probabilities(images):
            logits = leader(normalize(images, mean, std), training=False)
            return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)

        def outputs(images):
            # Runtime checks: TF Serving and loaded signatures feed the graph without checking shapes
            # or values. NaN/Inf pixels are refused (400 INVALID_ARGUMENT), other floats saturate to
            # 0..255 (so no finite input can overflow inside the network), and an empty batch gets
            # empty outputs without running the network (oneDNN's convolution fails on it).
            images = tf.ensure_shape(images, shape)
            with tf.control_dependencies([tf.debugging.assert_less_equal(
                tf.shape(images)[0], MAX_BATCH,
                message=f"batch of images is over the SavedModel's maximum of {MAX_BATCH}; split the request",
            )]):
                images = tf.identity(images)
            if images.dtype.is_floating:
                images = tf.debugging.check_numerics(images, "images must be finite pixel values 0..255")
                images = tf.clip_by_value(images, 0.0, 255.0)
            probs = tf.cond(
                tf.shape(images)[0] > 0,
                lambda: probabilities(images),
                lambda: tf.zeros([0, int(num_classes)], tf.float32),
            )
            scores, classes = tf.math.top_k(probs, k=k)
            return {
                "probabilities": tf.identity(probs, name="probabilities"),
                "classes": tf.cast(classes, tf.int32, name="classes"),
                "scores": tf.identity(scores, name="scores"),
                "class_names": self.class_table.lookup(tf.cast(classes, tf.int64)),
            }

        self.serve_float = tf.function(outputs, input_signature=[tf.TensorSpec(shape, tf.float32, name=INPUT_NAME)])
        self.serve_uint8 = tf.function(outputs, input_signature=[tf.TensorSpec(shape, tf.uint8, name=INPUT_NAME)])

        def outputs_from_files(encoded):
            encoded = tf.ensure_shape(encoded, [None])
            with tf.control_dependencies([tf.debugging.assert_less_equal(
                tf.shape(encoded)[0], MAX_BATCH,
                message=f"batch of images is over the SavedModel's maximum of {MAX_BATCH}; split the request",
            )]):
                encoded = tf.identity(encoded)
            pixels = tf.map_fn(lambda data: image_files.load_image(data, h, c), encoded,
                               fn_output_signature=tf.TensorSpec([h, w, c], tf.uint8))
            return outputs(pixels)

        self.serve_bytes = None
        if h == w:  # the training resize is to a square
            self.serve_bytes = tf.function(outputs_from_files, autograph=False,
                                           input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)])
        # Plain Python callables are not tracked, so the TFLite graph is not saved in the SavedModel.
        self._probabilities = probabilities
        self._input_shape = tuple(shape)
        self.image_shape = (h, w, c)
        self.num_classes = int(num_classes)
        self.top_k = k

    def tflite_function(self):
        """The TFLite graph: raw float32 pixels -> ``{"probabilities": [batch, K]}`` (no strings, no table)."""
        fn = tf.function(
            lambda images: {"probabilities": self._probabilities(images)},
            input_signature=[tf.TensorSpec(self._input_shape, tf.float32, name=INPUT_NAME)],
        )
        return fn.get_concrete_function()

    def signatures(self) -> dict:
        out = {
            DEFAULT_SIGNATURE: self.serve_float.get_concrete_function(),
            UINT8_SIGNATURE: self.serve_uint8.get_concrete_function(),
        }
        if self.serve_bytes is not None:
            out[BYTES_SIGNATURE] = self.serve_bytes.get_concrete_function()
        return out


def save(module: LeaderServing, path: str) -> None:
    """Writes ``module`` as a SavedModel (``saved_model.pb``, ``variables/``, ``assets/``) at ``path``."""
    tf.saved_model.save(module, path, signatures=module.signatures())


def load_signature(path: str, key: str = DEFAULT_SIGNATURE):
    """(loaded object, its signature ``key``): keep the object alive while using the function."""
    loaded = tf.saved_model.load(path)
    return loaded, loaded.signatures[key]


def variable_stats(path: str) -> dict:
    """Variables stored in a SavedModel: how many, how many scalars, and the bytes on disk."""
    prefix = os.path.join(path, "variables", "variables")
    entries = [(n, s) for n, s in tf.train.list_variables(prefix) if not n.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")]
    var_dir = os.path.join(path, "variables")
    return {
        "count": len(entries),
        "scalars": int(sum(int(np.prod(s)) for _, s in entries)),
        "bytes": int(sum(os.path.getsize(os.path.join(var_dir, f)) for f in os.listdir(var_dir))),
    }


def directory_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total
