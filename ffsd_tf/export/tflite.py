"""TFLite (LiteRT) files of the leader, and a small runner on the LiteRT interpreter.

Every file maps **raw RGB pixels** NHWC ``[batch, H, W, C]`` to ``probabilities [batch, K]``;
the training normalisation is inside the graph. The batch dimension is dynamic
(``shape_signature`` ``[-1, H, W, C]``; resize it with ``resize_tensor_input``), ``H, W, C`` are
fixed.

=========  ==============================  =====================================================
format      file                            conversion
=========  ==============================  =====================================================
fp32        ``leader_fp32.tflite``          float32 weights and activations
fp16        ``leader_fp16.tflite``          float16 weights (dequantised to float32 at load),
                                            float32 I/O
dynamic     ``leader_dynamic.tflite``       dynamic-range: int8 weights, float32 activations and
                                            I/O
int8        ``leader_int8.tflite``          full-integer: int8 weights and activations, calibrated
                                            on training images; **uint8 input** (the pixel bytes:
                                            scale 1, zero point 0) and **uint8 output**
                                            (probability = scale * (q - zero_point), scale 1/256)
=========  ==============================  =====================================================

uint8 in and out is the classic full-integer image-classifier interface (the quantised MobileNets,
Edge TPU, NNAPI): a camera frame's bytes go in unchanged. The input range is pinned to 0..255
so the input quantisation is exactly the identity (``pin_pixel_range``).
"""

from __future__ import annotations

import os
from typing import Iterable

import numpy as np
import tensorflow as tf

FORMATS = ("fp32", "fp16", "dynamic", "int8")
FILE_NAMES = {f: f"leader_{f}.tflite" for f in FORMATS}


def pin_pixel_range(images: np.ndarray) -> np.ndarray:
    """The representative images, with one pixel set to 0 and one to 255 if the set lacks them.

    The converter calibrates the input tensor's quantisation from the min and max it sees; a
    full 0..255 range makes the uint8 input exactly the pixel value (scale 1, zero point 0). One
    pixel of one image barely moves any activation range.
    """
    images = np.array(images, dtype=np.uint8, copy=True)
    if images.min() > 0:
        images[0, 0, 0, :] = 0
    if images.max() < 255:
        images[0, -1, -1, :] = 255
    return images


def convert(concrete_function, trackable, fmt: str, representative_images: np.ndarray | None = None) -> bytes:
    """The ``fmt`` flatbuffer of ``concrete_function`` (float32 pixels -> probabilities)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown TFLite format {fmt!r}; known: {', '.join(FORMATS)}")
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete_function], trackable)
    if fmt == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif fmt == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif fmt == "int8":
        if representative_images is None or len(representative_images) == 0:
            raise ValueError("int8 conversion needs representative images")
        calibration = pin_pixel_range(representative_images)

        def representative_dataset() -> Iterable[list[np.ndarray]]:
            for image in calibration:
                yield [image[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    return converter.convert()


def _interpreter_class():
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter


def _tensor_info(detail: dict) -> dict:
    scale, zero_point = detail["quantization"]
    return {
        "name": detail["name"],
        "dtype": np.dtype(detail["dtype"]).name,
        "shape": [int(d) for d in detail["shape_signature"]],
        "quantization": {"scale": float(scale), "zero_point": int(zero_point)} if scale else None,
    }


class TFLiteClassifier:
    """Runs a ``.tflite`` file on the LiteRT interpreter: pixels in, float32 probabilities out.

    ``predict`` takes uint8 or float pixels ``[N, H, W, C]`` (0..255), quantises them when the
    file's input is integer, runs batches of ``batch_size`` (resizing the batch dimension with
    ``strict=True``: only the batch may change) and dequantises integer outputs.
    """

    def __init__(self, model_path: str | None = None, *, model_content: bytes | None = None,
                 num_threads: int | None = None):
        Interpreter = _interpreter_class()
        self.interpreter = Interpreter(model_path=model_path, model_content=model_content, num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.image_shape = tuple(int(d) for d in self.input["shape_signature"][1:])
        self.num_classes = int(self.output["shape_signature"][-1])
        self._batch = None

    def describe(self) -> dict:
        return {"input": _tensor_info(self.input), "output": _tensor_info(self.output)}

    def _resize(self, batch: int) -> None:
        if batch != self._batch:
            self.interpreter.resize_tensor_input(self.input["index"], [batch, *self.image_shape], strict=True)
            self.interpreter.allocate_tensors()
            self._batch = batch

    def quantize_input(self, pixels: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self.input["dtype"])
        if dtype == np.float32:
            return np.asarray(pixels, np.float32)
        scale, zero_point = self.input["quantization"]
        info = np.iinfo(dtype)
        q = np.round(np.asarray(pixels, np.float32) / scale + zero_point)
        return np.clip(q, info.min, info.max).astype(dtype)

    def dequantize_output(self, values: np.ndarray) -> np.ndarray:
        if np.dtype(self.output["dtype"]) == np.float32:
            return values.astype(np.float32)
        scale, zero_point = self.output["quantization"]
        return (values.astype(np.float32) - zero_point) * scale

    def check_pixels(self, pixels) -> np.ndarray:
        """``pixels`` as float64 ``[B, H, W, C]`` saturated to 0..255; ValueError for another shape, a
        non-numeric dtype or NaN/Inf (the files do not check values: NaN in, NaN out)."""
        pixels = np.asarray(pixels)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != self.image_shape:
            expected = ", ".join(map(str, self.image_shape))
            raise ValueError(f"expected pixels of shape [batch, {expected}], got {list(pixels.shape)}")
        if pixels.dtype.kind not in "biuf":
            raise ValueError(f"expected numeric pixels 0..255, got dtype {pixels.dtype}")
        pixels = pixels.astype(np.float64)
        if not np.isfinite(pixels).all():
            raise ValueError("pixels must be finite values 0..255, got NaN or Inf")
        return np.clip(pixels, 0.0, 255.0)

    def invoke(self, pixels: np.ndarray) -> np.ndarray:
        """One batch: ``pixels [B, H, W, C]`` -> probabilities ``[B, K]`` (``[0, K]`` for no images)."""
        pixels = self.check_pixels(pixels)
        if len(pixels) == 0:  # the XNNPACK delegate cannot reshape to an empty batch
            return np.zeros((0, self.num_classes), np.float32)
        self._resize(pixels.shape[0])
        self.interpreter.set_tensor(self.input["index"], self.quantize_input(pixels))
        self.interpreter.invoke()
        return self.dequantize_output(self.interpreter.get_tensor(self.output["index"]))

    def predict(self, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
        pixels = self.check_pixels(pixels)
        if len(pixels) == 0:
            return self.invoke(pixels)
        return np.concatenate([self.invoke(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)])


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))
