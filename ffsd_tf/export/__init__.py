"""Export the FFSD leader: a TF Serving SavedModel, four TFLite files and a report, atomically.

::

    <export_dir>/<version>/          one version, TF Serving layout (appears all at once)
      saved_model.pb, variables/     the leader alone; signatures serving_default (float32 pixels)
      assets/class_names.txt           and serving_uint8 (uint8 pixels); see ``ffsd_tf.export.serving``
      fingerprint.pb
      tflite/leader_{fp32,fp16,dynamic,int8}.tflite     see ``ffsd_tf.export.tflite``
      leader.keras                   the leader in Keras' native format (normalised float32 -> logits):
                                     ``import ffsd_tf.networks; keras.models.load_model(...)``
      report.json, report.md         sizes, parameters, accuracy, agreement with Keras, latency

A version is built in ``<export_dir>/.tmp-<version>-<pid>@<host>-<random>/`` and renamed to
``<export_dir>/<version>/`` only when every file and the report are written; on any error the
temporary directory is removed, and one left by a killed export (its process no longer runs on
this host) is removed by the next export. An existing version is never replaced. ``docs/serving.md`` says
how to serve and run the files.

API: ``export_leader`` (a Keras leader + arrays) and ``export_run`` (a run directory or checkpoint
of ``python -m ffsd_tf.run``); ``python -m export RUN_DIR`` is the command line.
"""

from __future__ import annotations

import datetime
import os
import platform
import secrets
import shutil
import socket
from typing import Sequence

import numpy as np

ALL_FORMATS = ("savedmodel", "fp32", "fp16", "dynamic", "int8")
TFLITE_DIR = "tflite"
KERAS_FILE = "leader.keras"  # written with every export


class ExportError(ValueError):
    """An export that cannot be done as asked; the message is one actionable line."""


# ---------------------------------------------------------------------------------- versions
def existing_versions(export_dir: str) -> dict[int, str]:
    """Numeric version directories (TF Serving's rule: the name parses as an integer)."""
    if not os.path.isdir(export_dir):
        return {}
    found = {}
    for name in os.listdir(export_dir):
        if name.isdigit() and os.path.isdir(os.path.join(export_dir, name)):
            found[int(name)] = name
    return found


def resolve_version(export_dir: str, version: int | None) -> int:
    """``version`` if it is free, else the next one (max existing + 1, or 1); never an existing one."""
    existing = existing_versions(export_dir)
    following = max(existing, default=0) + 1
    if version is None:
        return following
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 1:
        raise ExportError(f"version must be a positive integer, got {version!r}")
    version = int(version)
    if version in existing or os.path.lexists(os.path.join(export_dir, str(version))):
        raise ExportError(
            f"version {version} already exists in {export_dir}; versions are never overwritten: "
            f"pass another --version or none for the next ({following})"
        )
    return version


def published_version(export_dir: str, checkpoint: str, weights: str = "network") -> str | None:
    """The version directory in ``export_dir`` already exported from a checkpoint named like
    ``checkpoint`` (its ``report.json`` source) with the same ``weights`` ("network", or "average":
    its weight average), or None. Damaged reports count as no export."""
    import json

    name = os.path.basename(os.fspath(checkpoint))
    for version in sorted(existing_versions(export_dir), reverse=True):
        path = os.path.join(export_dir, str(version))
        try:
            with open(os.path.join(path, "report.json"), "rb") as f:
                saved = json.loads(f.read().decode("utf-8"))
                source, kind = saved.get("source"), saved.get("weights", "network")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(source, str) and os.path.basename(source) == name and kind == weights:
            return path
    return None


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = [f for f in formats.split(",") if f]
    formats = tuple(dict.fromkeys(f.strip().lower() for f in formats))
    unknown = [f for f in formats if f not in ALL_FORMATS]
    if unknown or not formats:
        raise ExportError(
            f"unknown or no formats {list(unknown) or list(formats)}; choose from {','.join(ALL_FORMATS)}"
        )
    return formats


def _check_images(name: str, images, image_shape) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ExportError(f"{name} must be uint8 pixels, got {images.dtype}")
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(image_shape) or len(images) == 0:
        raise ExportError(f"{name} must have shape [N>0, {', '.join(map(str, image_shape))}], got {list(images.shape)}")
    return images


def _temp_owner() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temp_dirs(export_dir: str) -> list[str]:
    """Removes the ``.tmp-*`` folders that killed exports left in ``export_dir``; returns their names.

    Only folders whose owner (``<pid>@<host>`` in the name) is this host and no longer runs are
    removed: an export in progress, here or on another host sharing the folder, is left alone.
    """
    removed = []
    host = socket.gethostname()
    try:
        names = os.listdir(export_dir)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(".tmp-"):
            continue
        parts = name[len(".tmp-"):].split("-", 1)
        owner = parts[1].rsplit("-", 1)[0] if len(parts) == 2 and "-" in parts[1] else ""
        pid, _, owner_host = owner.partition("@")
        if not pid.isdigit() or owner_host != host or _process_alive(int(pid)):
            continue
        shutil.rmtree(os.path.join(export_dir, name), ignore_errors=True)
        removed.append(name)
    return removed


def _make_temp_dir(export_dir: str, version: int) -> str:
    """``<export_dir>/.tmp-<version>-<pid>@<host>-<random>`` with the usual permissions (umask), unlike
    mkdtemp's 0700: the directory becomes the version that TF Serving, maybe another user, reads."""
    while True:
        path = os.path.join(export_dir, f".tmp-{version}-{_temp_owner()}-{secrets.token_hex(4)}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


def _dims(shape) -> list[int]:
    return [-1 if d is None else int(d) for d in shape]


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------- export
def export_leader(
    leader,
    *,
    export_dir: str,
    mean: Sequence[float],
    std: Sequence[float],
    class_names: Sequence[str],
    image_shape: Sequence[int],
    representative_images: np.ndarray,
    eval_images: np.ndarray,
    eval_labels: np.ndarray,
    version: int | None = None,
    formats: Sequence[str] = ALL_FORMATS,
    top_k: int = 5,
    latency_repeats: int = 10,
    source: str | None = None,
    splits: tuple[str, str] = ("train", "test"),
    weights: str = "network",
) -> dict:
    """Exports ``leader`` (normalised float32 images -> logits) as ``<export_dir>/<version>/``.

    ``representative_images`` (uint8 ``[N, H, W, C]``, training images) calibrate the int8 file;
    ``eval_images``/``eval_labels`` measure every format against Keras. Returns the report (also
    written as ``report.json``/``report.md`` in the version directory). Raises ``ExportError``
    for bad arguments or an existing ``version`` before anything is written.
    """
    formats = check_formats(formats)
    image_shape = tuple(int(d) for d in image_shape)
    if len(image_shape) != 3:
        raise ExportError(f"image_shape must be [H, W, C], got {list(image_shape)}")
    model_shape = tuple(leader.input_shape[1:])
    if model_shape != image_shape:
        raise ExportError(f"image_shape {list(image_shape)} does not match the leader's input {list(model_shape)}")
    num_classes = int(leader.output_shape[-1])
    class_names = [str(c) for c in class_names]
    if len(class_names) != num_classes:
        raise ExportError(f"{len(class_names)} class names for a leader with {num_classes} outputs")
    if any("\n" in c or "\r" in c for c in class_names):
        raise ExportError("class names must not contain line breaks (they are stored one a line)")
    mean = [float(m) for m in np.ravel(mean)]
    std = [float(s) for s in np.ravel(std)]
    if len(mean) != image_shape[2] or len(std) != image_shape[2] or min(std) <= 0:
        raise ExportError(f"mean and std need {image_shape[2]} values (std > 0), got {mean} and {std}")
    if top_k < 1:
        raise ExportError(f"top_k must be >= 1, got {top_k}")
    representative_images = _check_images("representative_images", representative_images, image_shape)
    eval_images = _check_images("eval_images", eval_images, image_shape)
    eval_labels = np.asarray(eval_labels).reshape(-1).astype(np.int64)
    if len(eval_labels) != len(eval_images):
        raise ExportError(f"{len(eval_images)} eval images but {len(eval_labels)} labels")
    if eval_labels.min() < 0 or eval_labels.max() >= num_classes:
        raise ExportError(f"eval labels must be in [0, {num_classes}), got {eval_labels.min()}..{eval_labels.max()}")

    export_dir = os.path.abspath(export_dir)
    version = resolve_version(export_dir, version)
    created = not os.path.isdir(export_dir)
    os.makedirs(export_dir, exist_ok=True)
    remove_stale_temp_dirs(export_dir)
    tmp = _make_temp_dir(export_dir, version)
    try:
        report = _build(
            tmp, leader, formats=formats, version=version, mean=mean, std=std, class_names=class_names,
            image_shape=image_shape, representative_images=representative_images, eval_images=eval_images,
            eval_labels=eval_labels, top_k=top_k, latency_repeats=latency_repeats, source=source, splits=splits,
            weights=weights,
        )
        target = os.path.join(export_dir, str(version))
        if os.path.lexists(target):  # someone else published this version meanwhile
            raise ExportError(f"version {version} appeared in {export_dir} during the export; nothing was overwritten")
        os.rename(tmp, target)  # atomic; refuses to replace a non-empty directory
        _fsync_dir(export_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            try:
                os.rmdir(export_dir)  # only if still empty
            except OSError:
                pass
        raise
    report["path"] = target
    return report


def _build(tmp, leader, *, formats, version, mean, std, class_names, image_shape, representative_images,
           eval_images, eval_labels, top_k, latency_repeats, source, splits, weights="network") -> dict:
    import keras
    import tensorflow as tf

    import ffsd_tf.networks  # noqa: F401  (registers the custom layers that load_model needs)
    from ffsd_tf.export import report as rep
    from ffsd_tf.export import serving, tflite

    src_dir = os.path.join(tmp, ".src")
    os.makedirs(src_dir)
    names_file = os.path.join(src_dir, serving.CLASS_NAMES_ASSET)
    serving.write_class_names(names_file, class_names)
    module = serving.LeaderServing(
        leader, mean=mean, std=std, image_shape=image_shape, class_names_file=names_file,
        num_classes=len(class_names), top_k=top_k,
    )
    trainable = int(sum(int(np.prod(v.shape)) for v in leader.trainable_weights))
    report = {
        "version": version,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "weights": weights,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "tflite_threads": tflite.default_threads(),
        "model": {
            "name": leader.name,
            "parameters": int(leader.count_params()),
            "trainable_parameters": trainable,
            "image_shape": list(image_shape),
            "num_classes": len(class_names),
            "mean": mean,
            "std": std,
            "class_names": class_names,
            "top_k": module.top_k,
        },
        "evaluation": {"images": int(len(eval_images)), "split": splits[1]},
        "representative": {"images": int(len(representative_images)), "split": splits[0]},
        "formats": {},
    }

    # Reference: the Keras leader on normalised pixels (normalised here in NumPy, independently).
    m = np.asarray(mean, np.float32)
    s = np.asarray(std, np.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, *image_shape], tf.float32)])
    def keras_logits(x):
        return leader(x, training=False)

    def keras_probs(pixels):
        x = (np.asarray(pixels, np.float32) / 255.0 - m) / s
        return tf.nn.softmax(tf.cast(keras_logits(tf.constant(x)), tf.float32)).numpy()

    def batched(fn, pixels, batch_size=256):
        return np.concatenate([fn(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)])

    reference = batched(keras_probs, eval_images)
    report["formats"]["keras"] = {
        "accuracy": rep.accuracy(reference, eval_labels),
        "latency_ms": rep.latency_ms(keras_probs, eval_images, repeats=latency_repeats),
    }

    # leader.keras, Keras' native file; read back and compared with the leader it was saved from.
    keras_path = os.path.join(tmp, KERAS_FILE)
    from ffsd_tf.networks.layers import with_keras_batchnorm

    with_keras_batchnorm(leader).save(keras_path)  # loads with plain Keras: no ffsd_tf import needed
    reloaded = keras.models.load_model(keras_path, compile=False)
    reloaded_logits = tf.function(lambda x: reloaded(x, training=False),
                                  input_signature=[tf.TensorSpec([None, *image_shape], tf.float32)])

    def reloaded_probs(pixels):
        x = (np.asarray(pixels, np.float32) / 255.0 - m) / s
        return tf.nn.softmax(tf.cast(reloaded_logits(tf.constant(x)), tf.float32)).numpy()

    report["formats"]["keras"].update(path=KERAS_FILE, size_bytes=os.path.getsize(keras_path),
                                      **rep.compare(batched(reloaded_probs, eval_images), reference))
    del reloaded, reloaded_logits

    def measure(name, predict_batch, extra):
        probs = batched(predict_batch, eval_images)
        row = dict(extra)
        row["accuracy"] = rep.accuracy(probs, eval_labels)
        row.update(rep.compare(probs, reference))
        row["latency_ms"] = rep.latency_ms(predict_batch, eval_images, repeats=latency_repeats)
        report["formats"][name] = row
        return probs

    if "savedmodel" in formats:
        serving.save(module, tmp)
        loaded = tf.saved_model.load(tmp)
        default = loaded.signatures[serving.DEFAULT_SIGNATURE]
        as_uint8 = loaded.signatures[serving.UINT8_SIGNATURE]
        signatures = {}
        for key, fn in sorted(loaded.signatures.items()):
            spec = fn.structured_input_signature[1][serving.INPUT_NAME]
            outputs = fn.structured_outputs
            signatures[key] = {
                "input": {"name": serving.INPUT_NAME, "dtype": spec.dtype.name, "shape": _dims(spec.shape)},
                "outputs": {k: {"dtype": v.dtype.name, "shape": _dims(v.shape)} for k, v in outputs.items()},
            }
        probs = measure(
            "savedmodel",
            lambda p: default(images=tf.constant(np.asarray(p, np.float32)))["probabilities"].numpy(),
            {
                "path": "saved_model.pb",
                "files": ["saved_model.pb", "variables/", "assets/"],  # size_bytes counts all three
                "size_bytes": sum(
                    serving.directory_bytes(os.path.join(tmp, d)) for d in ("variables", "assets")
                ) + os.path.getsize(os.path.join(tmp, "saved_model.pb")),
                "variables": serving.variable_stats(tmp),
                "signatures": signatures,
            },
        )
        uint8_probs = batched(lambda p: as_uint8(images=tf.constant(p))["probabilities"].numpy(), eval_images)
        report["formats"]["savedmodel"]["serving_uint8_max_abs_diff"] = float(np.max(np.abs(uint8_probs - probs)))
        del loaded

    tflite_formats = [f for f in formats if f in tflite.FORMATS]
    if tflite_formats:
        os.makedirs(os.path.join(tmp, TFLITE_DIR))
        concrete = module.tflite_function()
        for fmt in tflite_formats:
            data = tflite.convert(concrete, module, fmt, representative_images)
            rel = os.path.join(TFLITE_DIR, tflite.FILE_NAMES[fmt])
            with open(os.path.join(tmp, rel), "wb") as f:
                f.write(data)
            runner = tflite.TFLiteClassifier(os.path.join(tmp, rel), num_threads=tflite.default_threads())
            measure(fmt, runner.invoke, {"path": rel, "size_bytes": len(data), "io": runner.describe()})

    shutil.rmtree(src_dir)
    rep.write(tmp, report)
    return report


# ---------------------------------------------------------------------------------- run dirs
def _take(dataset, n: int, seed: int = 0):
    """Up to ``n`` (image, label) pairs, a seeded sample from a possibly class-sorted split."""
    ds = dataset.shuffle(max(10_000, 10 * n), seed=seed, reshuffle_each_iteration=False).take(n).batch(max(1, n))
    for images, labels in ds:
        return np.asarray(images.numpy(), np.uint8), np.asarray(labels.numpy()).reshape(-1)
    raise ExportError("the dataset split is empty")


def run_dir_of(path: str) -> str:
    """The run directory of a run directory or of a checkpoint prefix ``<run>/checkpoints/ckpt-N``."""
    return path if os.path.isdir(path) else os.path.dirname(os.path.dirname(os.path.abspath(path)))


def check_run_path(path: str) -> None:
    """Fails fast (``RunDirError``, one line) on a path that cannot be a run or checkpoint."""
    from ffsd_tf import rundir

    if os.path.isdir(path):
        rundir.load_config(path)  # "not a run directory" when config.json is missing
        return
    if not os.path.exists(path + ".index"):
        if not os.path.exists(path):
            raise rundir.RunDirError(
                f"{path} does not exist; pass a run directory (--output_dir of ffsd_tf.run) "
                "or a checkpoint <run>/checkpoints/ckpt-N"
            )
        raise rundir.RunDirError(f"{path} is neither a run directory nor a checkpoint prefix (no {path}.index)")


def export_run(
    run_dir_or_checkpoint: str,
    *,
    export_dir: str | None = None,
    version: int | None = None,
    max_eval: int = 1000,
    max_representative: int = 200,
    formats: Sequence[str] = ALL_FORMATS,
    top_k: int = 5,
    latency_repeats: int = 10,
    average: bool = False,
) -> dict:
    """Exports the leader of a training run (its latest checkpoint, or the checkpoint given);
    ``average=True``: its weight average (a run trained with ``--ema_decay`` > 0).

    Representative images are a seeded sample of ``max_representative`` training images;
    evaluation uses a seeded sample of ``max_eval`` test images. Default ``export_dir``:
    ``<run_dir>/export``. Raises ``rundir.RunDirError`` for a missing or mismatched run and
    ``ExportError`` for an existing version, both before anything is written.
    """
    from ffsd_tf import rundir

    formats = check_formats(formats)
    path = os.fspath(run_dir_or_checkpoint)
    check_run_path(path)
    run_dir = run_dir_of(path)
    export_dir = export_dir or os.path.join(run_dir, rundir.EXPORT)
    resolve_version(export_dir, version)  # an existing version fails before the restore
    model, meta, checkpoint = rundir.restore_model(path)
    if average and not model.averages:
        raise ExportError(f"{run_dir} kept no weight averages (trained with --ema_decay=0): export without --average")
    bundle = rundir.load_run_data(run_dir)
    return export_model(
        model, bundle, export_dir=export_dir, class_names=meta.get("class_names"), mean=meta["mean"],
        std=meta["std"], version=version, max_eval=max_eval, max_representative=max_representative,
        formats=formats, top_k=top_k, latency_repeats=latency_repeats, source=checkpoint, average=average,
    )


def export_model(
    model,
    data,
    *,
    export_dir: str,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    version: int | None = None,
    max_eval: int = 1000,
    max_representative: int = 200,
    formats: Sequence[str] = ALL_FORMATS,
    top_k: int = 5,
    latency_repeats: int = 10,
    source: str | None = None,
    average: bool = False,
) -> dict:
    """Exports a trained ``FFSD`` cohort's leader (or any logits model) for the data it learnt;
    ``average=True``: the leader's weight average (``ema_decay`` > 0; ``FFSD.deployable_leader``).

    ``data``: the ``DataBundle`` of ``ffsd_tf.data.load_dataset`` it was trained on; its class
    names and mean/std go into the exports unless given. Representative images are a seeded sample
    of ``max_representative`` training images, evaluation a seeded sample of ``max_eval`` test
    images. Writes ``<export_dir>/<version>/`` (SavedModel, TFLite, ``leader.keras``, report)
    atomically and returns the report.
    """
    if hasattr(model, "deployable_leader"):
        try:
            leader = model.deployable_leader(average=average)
        except ValueError as e:
            raise ExportError(str(e)) from None
    elif average:
        raise ExportError("average=True needs an FFSD cohort trained with ema_decay > 0")
    else:
        leader = model
    rep_images, _ = _take(data.raw("train"), max_representative, seed=1)
    eval_images, eval_labels = _take(data.raw("test"), max_eval, seed=2)
    num_classes = int(leader.output_shape[-1])
    return export_leader(
        leader,
        export_dir=export_dir,
        mean=data.mean if mean is None else mean,
        std=data.std if std is None else std,
        class_names=class_names or list(data.class_names) or [str(i) for i in range(num_classes)],
        image_shape=tuple(leader.input_shape[1:]),
        representative_images=rep_images,
        eval_images=eval_images,
        eval_labels=eval_labels,
        version=version,
        formats=formats,
        top_k=top_k,
        latency_repeats=latency_repeats,
        source=source,
        weights="average" if average else "network",
    )


__all__ = [
    "ALL_FORMATS",
    "KERAS_FILE",
    "TFLITE_DIR",
    "ExportError",
    "check_formats",
    "existing_versions",
    "export_leader",
    "export_model",
    "export_run",
    "published_version",
    "resolve_version",
]
