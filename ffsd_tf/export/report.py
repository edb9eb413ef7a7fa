"""The export report: what was written, how large, how accurate, how close to Keras, how fast.

``report.json`` (machine-readable) and ``report.md`` (the same as tables) sit in the version
directory. Accuracy is top-1 on the evaluation images; ``max_abs_prob_diff`` and
``top1_agreement`` compare each format's probabilities with the Keras leader's on the same raw
pixels; latency is the mean wall time per image on the exporting machine at batch 1 (``repeats``
calls) and batch 32 (``max(3, repeats // 2)`` calls), after one warm-up call each, so compare it
only between rows of one report.
"""

from __future__ import annotations

import json
import time
from typing import Callable

import numpy as np

LATENCY_BATCHES = (1, 32)


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(probabilities, axis=-1) == np.asarray(labels).reshape(-1)))


def compare(probabilities: np.ndarray, reference: np.ndarray) -> dict:
    """Max |delta probability| and top-1 agreement of ``probabilities`` with ``reference``."""
    return {
        "max_abs_prob_diff": float(np.max(np.abs(probabilities.astype(np.float64) - reference.astype(np.float64)))),
        "top1_agreement": float(np.mean(np.argmax(probabilities, -1) == np.argmax(reference, -1))),
    }


def latency_ms(predict_batch: Callable[[np.ndarray], object], images: np.ndarray, *, repeats: int = 10,
               batch_sizes=LATENCY_BATCHES) -> dict:
    """Mean milliseconds per image of ``predict_batch`` on batches of each size (one warm-up call)."""
    out = {}
    for b in batch_sizes:
        batch = np.resize(images, (b, *images.shape[1:])).astype(images.dtype)  # repeats images if fewer than b
        predict_batch(batch)
        n = max(1, repeats) if b == 1 else max(3, repeats // 2)
        start = time.perf_counter()
        for _ in range(n):
            predict_batch(batch)
        out[f"batch{b}"] = 1000.0 * (time.perf_counter() - start) / (n * b)
    return out


def _vec(values):
    return "[" + ", ".join(f"{v:.4f}" for v in values) + "]"


def _pct(x):
    return "" if x is None else f"{100 * x:.2f}"


def _num(x, fmt):
    return "" if x is None else format(x, fmt)


def markdown(report: dict) -> str:
    model = report["model"]
    ev = report["evaluation"]
    lines = [
        f"# Leader export, version {report['version']}",
        "",
        f"- model: `{model['name']}`, {model['parameters']:,} parameters "
        f"({model['trainable_parameters']:,} trainable), input NHWC {model['image_shape']} raw pixels 0..255, "
        f"{model['num_classes']} classes",
        f"- normalisation inside every graph: (pixels / 255 - mean) / std, mean {_vec(model['mean'])}, "
        f"std {_vec(model['std'])}",
        f"- evaluation: {ev['images']} images ({ev['split']}); representative (int8 calibration): "
        f"{report['representative']['images']} images ({report['representative']['split']})",
    ]
    if report.get("source"):
        lines.append(f"- source: `{report['source']}`")
    if report.get("weights") == "average":
        lines.append("- weights: the leader's weight average (trained with --ema_decay), not its last weights")
    lines += [
        f"- latency: mean ms per image at batch 1 and 32 on this machine ({report['machine']}); "
        f"TFLite with {report['tflite_threads']} threads",
        "",
        "| format | file | size (KiB) | top-1 acc (%) | max abs Δp vs Keras | top-1 agreement (%) "
        "| ms/img @1 | ms/img @32 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in report["formats"].items():
        lat = row.get("latency_ms", {})
        size = row.get("size_bytes")
        files = row.get("files") or ([row["path"]] if row.get("path") else [])
        lines.append(
            f"| {name} | {' + '.join(f'`{f}`' for f in files)} | "
            f"{_num(size and size / 1024, '.1f')} | {_pct(row.get('accuracy'))} | "
            f"{_num(row.get('max_abs_prob_diff'), '.2e')} | {_pct(row.get('top1_agreement'))} | "
            f"{_num(lat.get('batch1'), '.3f')} | {_num(lat.get('batch32'), '.3f')} |"
        )
    sm = report["formats"].get("savedmodel")
    if sm:
        lines += [
            "",
            f"SavedModel: {sm['variables']['count']} variables, {sm['variables']['scalars']:,} values, "
            f"{sm['variables']['bytes']:,} bytes of variables; signatures "
            + ", ".join(f"`{k}` ({v['input']['dtype']} `{v['input']['name']}` {v['input']['shape']})"
                        for k, v in sm["signatures"].items()),
        ]
    tfl = {k: v for k, v in report["formats"].items() if "io" in v}
    if tfl:
        lines += ["", "| TFLite | input | output |", "|---|---|---|"]
        for name, row in tfl.items():
            cells = []
            for side in ("input", "output"):
                t = row["io"][side]
                q = t["quantization"]
                qtext = f", scale {q['scale']:.6g}, zero point {q['zero_point']}" if q else ""
                cells.append(f"{t['dtype']} {t['shape']}{qtext}")
            lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def write(directory: str, report: dict) -> None:
    import os

    with open(os.path.join(directory, "report.json"), "w") as f:
        json.dump(report, f, indent=2, sort_keys=False)
        f.write("\n")
    with open(os.path.join(directory, "report.md"), "w") as f:
        f.write(markdown(report))
