"""One image file -> the network's input pixels: the single statement of the decode, resize and
channel rules, used by ``--dataset=folder`` (training, evaluation, the prepared cache) and by the
exported SavedModel's ``serving_bytes`` signature, so a served file is the image trained on.

Rules, in order:

1. ``tf.io.decode_image`` (JPEG, PNG, BMP, GIF; a GIF gives its first frame), 1-4 channels as stored.
2. An alpha channel is dropped (2 -> 1, 4 -> 3 channels).
3. Bilinear resize with antialiasing to ``size`` x ``size`` (the aspect ratio is not kept), in
   float32, then rounded half to even (``rint``) and clipped to uint8.
4. Channels to the model's: a grayscale image is repeated to RGB for a 3-channel model; for a
   1-channel model (trained only on grayscale images) a colour image becomes its ITU-R 601 luma
   (``tf.image.rgb_to_grayscale``, applied to the resized uint8 image and rounded).

An image of more than ``MAX_IMAGE_PIXELS`` pixels (width x height, read from the file's header before
anything is decoded) is refused: decoding a 40,000 x 40,000 PNG of 1.5 MB would take 4.8 GB.
Every function here is TensorFlow ops only, so it runs eagerly and inside a ``tf.function``.
"""

from __future__ import annotations

import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
MAX_IMAGE_PIXELS = 100_000_000  # 100 megapixels (a 10,000 x 10,000 image: 300 MB decoded)


def _le(data: tf.Tensor, pos: int, length: int, signed: bool = False) -> tf.Tensor:
    """Little-endian unsigned (or signed) integer of ``length`` bytes at ``pos``, as int64."""
    raw = tf.io.decode_raw(tf.strings.substr(data, pos, length), tf.uint8)
    value = tf.zeros([], tf.int64)
    for i in range(length):
        value += tf.cast(raw[i], tf.int64) * (256**i)
    if signed:
        value = tf.where(value >= 2 ** (8 * length - 1), value - 2 ** (8 * length), value)
    return value


def _be(data: tf.Tensor, pos: int, length: int) -> tf.Tensor:
    raw = tf.io.decode_raw(tf.strings.substr(data, pos, length), tf.uint8)
    value = tf.zeros([], tf.int64)
    for i in range(length):
        value = value * 256 + tf.cast(raw[i], tf.int64)
    return value


def header_pixels(data: tf.Tensor) -> tf.Tensor:
    """Width x height (int64) from an encoded image's header, without decoding it; 0 if the header is
    not one of the four formats' (decoding then reports the file as not an image)."""
    data = tf.convert_to_tensor(data, tf.string)
    size = tf.strings.length(data)
    magic2 = tf.strings.substr(data, 0, 2)
    magic4 = tf.strings.substr(data, 0, 4)

    def jpeg():
        shape = tf.io.extract_jpeg_shape(data)
        return tf.cast(shape[0], tf.int64) * tf.cast(shape[1], tf.int64)

    def png():  # IHDR: width, height as big-endian uint32 at bytes 16 and 20
        return _be(data, 16, 4) * _be(data, 20, 4)

    def gif():  # logical screen: little-endian uint16 at bytes 6 and 8
        return _le(data, 6, 2) * _le(data, 8, 2)

    def bmp():  # BITMAPINFOHEADER: int32 width and height at bytes 18 and 22 (height < 0: top-down)
        return tf.abs(_le(data, 18, 4, signed=True)) * tf.abs(_le(data, 22, 4, signed=True))

    zero = lambda: tf.zeros([], tf.int64)  # noqa: E731
    return tf.case(
        [
            (tf.logical_and(size >= 4, tf.equal(magic2, b"\xff\xd8")), jpeg),
            (tf.logical_and(size >= 24, tf.equal(magic4, b"\x89PNG")), png),
            (tf.logical_and(size >= 10, tf.equal(tf.strings.substr(data, 0, 3), b"GIF")), gif),
            (tf.logical_and(size >= 26, tf.equal(magic2, b"BM")), bmp),
        ],
        default=zero,
        exclusive=False,
    )


def check_size(data: tf.Tensor, max_pixels: int = MAX_IMAGE_PIXELS) -> tf.Tensor:
    """``data`` unchanged, after an in-graph check that its header states at most ``max_pixels``
    (``InvalidArgumentError`` "image of N pixels is over the limit of M ..." otherwise)."""
    pixels = header_pixels(data)
    message = f"is over the limit of {max_pixels} pixels (width x height); downscale it"
    with tf.control_dependencies([tf.debugging.assert_less_equal(pixels, tf.constant(max_pixels, tf.int64),
                                                                 message=f"image {message}")]):
        return tf.identity(data)


def decode_resize(data: tf.Tensor, size: int) -> tf.Tensor:
    """Rules 1-3: uint8 ``[size, size, 1 or 3]`` (the stored channels, alpha dropped) of one encoded image."""
    image = tf.io.decode_image(data, expand_animations=False)  # GIF: first frame
    channels = tf.shape(image)[-1]
    keep = tf.where(tf.logical_or(tf.equal(channels, 2), tf.equal(channels, 4)), channels - 1, channels)
    image = image[..., :keep]
    with tf.control_dependencies([tf.debugging.assert_positive(tf.reduce_prod(tf.shape(image)[:2]),
                                                               message="the image is empty")]):
        resized = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.math.rint(resized), 0.0, 255.0), tf.uint8)


def to_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    """Rule 4: a uint8 ``[H, W, 1 or 3]`` image with the model's ``channels`` (1 or 3)."""
    have = tf.shape(image)[-1]
    if channels == 3:
        return tf.cond(tf.equal(have, 1), lambda: tf.tile(image, [1, 1, 3]), lambda: image)
    if channels == 1:
        def luma():
            gray = tf.image.rgb_to_grayscale(tf.cast(image, tf.float32))
            return tf.cast(tf.clip_by_value(tf.math.rint(gray), 0.0, 255.0), tf.uint8)
        return tf.cond(tf.equal(have, 3), luma, lambda: image)
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def load_image(data: tf.Tensor, size: int, channels: int, max_pixels: int = MAX_IMAGE_PIXELS) -> tf.Tensor:
    """Rules 1-4 with the size check: uint8 ``[size, size, channels]`` of one encoded image."""
    image = to_channels(decode_resize(check_size(data, max_pixels), size), channels)
    return tf.ensure_shape(image, [size, size, channels])
