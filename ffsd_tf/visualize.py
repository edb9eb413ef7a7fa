"""Figures of a training run: ``python -m ffsd_tf.visualize RUN_DIR [--images=8] [--output_dir=DIR] [--split=test]``.

Writes two PNGs into ``--output_dir`` (default ``RUN_DIR/figures``):

* ``attention.png`` (paper Figs. 2 and 7): one row per image, a class-balanced seeded sample
  of the split; first the image, then, for every common student S_1..S_n and the leader S_0,
  the attention map ``attention_map(F^m)`` (Eq. 7 as coded: channel mean of F^2) of each of its
  M feature maps F^1..F^M, shallow to deep. Each map is min-max normalised on its own (the
  figure shows *where* a network attends, not how strongly), bilinearly resized to the panel
  and coloured with the jet colormap (blue = least, red = most attention). Rows are labelled
  with the true class and the leader's prediction (student 1's without a leader), columns with
  the network and the stage's resolution.
* ``curves.png``: from ``history.json``, train and test accuracy of every model per epoch,
  train (solid) and test (dashed) loss of every model, and every training loss term
  (``student2/diversity``, ``leader/kl``...).

The attention grid itself (no text) is ``attention_image_grid(model, images)``, a uint8
``[H, W, 3]`` array; ``AttentionImages`` is a Keras callback writing it to TensorBoard.
Neither needs matplotlib; the PNG files do (``pip install matplotlib``).

The run's latest checkpoint is restored (``rundir.restore_model``) and its data rebuilt from
its ``config.json`` as ``export`` does. Bad input (a missing directory, a directory that is not a
run, a run without checkpoint or history, a bad flag) exits with code 2 and one line
``error: ...`` on stderr, before anything is written.
"""

from __future__ import annotations

import dataclasses
import io
import os
import sys

import numpy as np
from absl import flags

from ffsd_tf.atomic import write_bytes_atomic
from ffsd_tf.cli import fail, parse_args
from ffsd_tf.quiet import import_tensorflow_quietly

tf = import_tensorflow_quietly()
import keras  # noqa: E402

from ffsd_tf.attention import attention_map  # noqa: E402

GAP = 2  # pixels between panels
GROUP_GAP = 8  # pixels between the image column and each network's group of panels
BACKGROUND = 255
DEFAULT_PANEL = 64


# ---------------------------------------------------------------------------------- colours
def jet(x) -> np.ndarray:
    """The jet colormap of values in [0, 1]: ``[...] -> [..., 3]`` float32 in [0, 1] (blue -> red)."""
    x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)[..., None]
    centres = np.asarray([0.75, 0.5, 0.25], np.float32)  # r, g, b
    return np.clip(1.5 - np.abs(4.0 * x - 4.0 * centres), 0.0, 1.0)


def minmax(x: np.ndarray, axes) -> np.ndarray:
    """Rescales to [0, 1] over ``axes``; a constant slice becomes 0."""
    lo = x.min(axis=axes, keepdims=True)
    hi = x.max(axis=axes, keepdims=True)
    span = hi - lo
    return np.where(span > 0, (x - lo) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)


# ---------------------------------------------------------------------------------- layout
@dataclasses.dataclass(frozen=True)
class GridLayout:
    """Where every panel of an attention grid lies: rows are images, column 0 the image, then
    ``num_stages`` columns per network."""

    num_images: int
    networks: tuple
    num_stages: int
    panel: int

    @property
    def height(self) -> int:
        return self.num_images * self.panel + (self.num_images - 1) * GAP

    @property
    def width(self) -> int:
        n = len(self.networks)
        return self.panel * (1 + n * self.num_stages) + n * GROUP_GAP + n * (self.num_stages - 1) * GAP

    def box(self, row: int, network: str | None = None, stage: int | None = None) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of the image panel (network None) or of ``network``'s ``stage`` (0-based)."""
        y0 = row * (self.panel + GAP)
        if network is None:
            x0 = 0
        else:
            k = self.networks.index(network)
            group = self.panel + GROUP_GAP + k * (self.num_stages * self.panel + (self.num_stages - 1) * GAP + GROUP_GAP)
            x0 = group + stage * (self.panel + GAP)
        return y0, y0 + self.panel, x0, x0 + self.panel


# ---------------------------------------------------------------------------------- maps
def cohort_networks(model) -> list[tuple[str, keras.Model]]:
    """(name, backbone) of every common student, then the leader when there is one, then an offline
    teacher with as many stages (its attention beside the students' is what AT distils)."""
    nets = [(net.name, net) for net in model.common_students]
    if getattr(model, "leader", None) is not None:
        nets.append(("leader", model.leader))
    teacher = getattr(model, "teacher", None)
    if teacher is not None and len(teacher.output["features"]) == len(nets[0][1].output["features"]):
        nets.append(("teacher", teacher))
    return nets


def cohort_attention(model, images) -> tuple[list[str], list[list[np.ndarray]]]:
    """Eq. 7 attention maps ``[N, H_m, W_m]`` of F^1..F^M of every network (inference mode)."""
    images = tf.convert_to_tensor(images, tf.float32)
    names, maps = [], []
    for name, net in cohort_networks(model):
        features = net(images, training=False)["features"]
        names.append(name)
        maps.append([attention_map(f).numpy() for f in features])
    return names, maps


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """``[N, h, w, c]`` -> ``[N, size, size, c]`` bilinear (a no-op at the right size)."""
    if x.shape[1:3] == (size, size):
        return x.astype(np.float32)
    return tf.image.resize(tf.convert_to_tensor(x, tf.float32), (size, size), method="bilinear").numpy()


def display_pixels(images, pixels=None) -> np.ndarray:
    """What the image column shows, float32 [N, H, W, 3] in [0, 1]: ``pixels`` (uint8) when given,
    else the network inputs min-max rescaled per image."""
    if pixels is not None:
        shown = np.asarray(pixels, np.float32) / 255.0
    else:
        shown = minmax(np.asarray(images, np.float32), axes=(1, 2, 3))
    if shown.shape[-1] == 1:
        shown = np.repeat(shown, 3, axis=-1)
    return shown[..., :3]


def attention_grid(model, images, pixels=None, panel: int = DEFAULT_PANEL):
    """``(grid uint8 [H, W, 3], GridLayout)``: see ``attention_image_grid``."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must be a non-empty batch [N, H, W, C], got shape {list(images.shape)}")
    if pixels is not None and (np.shape(pixels)[0] != len(images) or np.ndim(pixels) != 4):
        raise ValueError(f"pixels {list(np.shape(pixels))} do not match images {list(images.shape)}")
    names, maps = cohort_attention(model, images)
    layout = GridLayout(len(images), tuple(names), len(maps[0]), int(panel))
    grid = np.full((layout.height, layout.width, 3), BACKGROUND, np.uint8)
    shown = _resize(display_pixels(images, pixels), layout.panel)
    for row in range(len(images)):
        y0, y1, x0, x1 = layout.box(row)
        grid[y0:y1, x0:x1] = np.round(255 * np.clip(shown[row], 0, 1)).astype(np.uint8)
    for name, stages in zip(names, maps):
        for m, a in enumerate(stages):
            coloured = jet(_resize(minmax(a, axes=(1, 2))[..., None], layout.panel)[..., 0])
            for row in range(len(images)):
                y0, y1, x0, x1 = layout.box(row, name, m)
                grid[y0:y1, x0:x1] = np.round(255 * coloured[row]).astype(np.uint8)
    return grid, layout


def attention_image_grid(model, images, pixels=None, panel: int = DEFAULT_PANEL) -> np.ndarray:
    """The attention figure as a uint8 ``[H, W, 3]`` array (no text).

    ``model``: an ``FFSD`` cohort. ``images``: the networks' input, normalised float
    ``[N, H, W, C]`` (e.g. ``bundle.normalize(pixels)``). ``pixels``: optional uint8 originals
    for the image column (default: ``images`` min-max rescaled per image). One row per image:
    the image, then for each common student and the leader its M attention maps (Eq. 7),
    each min-max normalised, resized to ``panel`` x ``panel`` and jet-coloured. Panels are
    ``GAP`` pixels apart, each network's group ``GROUP_GAP`` from the previous; white background.
    """
    return attention_grid(model, images, pixels, panel)[0]


class AttentionImages(keras.callbacks.Callback):
    """Writes ``attention_image_grid`` to TensorBoard every ``every`` epochs.

    ``AttentionImages(images, log_dir, every=1, *, pixels=None, name="attention", panel=64)``:
    ``images`` are normalised network inputs ``[N, H, W, C]`` (a few test images), ``pixels``
    their uint8 originals (optional), ``log_dir`` the summary directory. At the end of epoch
    ``e`` (1-based, as the other summaries of a run) with ``e % every == 0`` it logs
    ``tf.summary.image(name, grid[None], step=e)``.
    """

    def __init__(self, images, log_dir: str, every: int = 1, *, pixels=None, name: str = "attention",
                 panel: int = DEFAULT_PANEL):
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        self.images = np.asarray(images, np.float32)
        if self.images.ndim != 4 or len(self.images) == 0:
            raise ValueError(f"images must be a non-empty batch [N, H, W, C], got shape {list(self.images.shape)}")
        self.pixels = None if pixels is None else np.asarray(pixels)
        self.log_dir, self.every, self.name, self.panel = log_dir, int(every), name, int(panel)
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        step = epoch + 1
        if step % self.every:
            return
        grid = attention_image_grid(self.model, self.images, self.pixels, self.panel)
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            tf.summary.image(self.name, grid[None], step=step, max_outputs=1)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# ---------------------------------------------------------------------------------- data
def sample_images(bundle, n: int, split: str = "test", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images and their labels from ``split`` of a DataBundle, class-balanced and seeded."""
    from ffsd_tf.data.pipeline import balanced_subset

    x, y = (bundle.x_test, bundle.y_test) if split == "test" else (bundle.x_train, bundle.y_train)
    n = min(int(n), len(y))
    keep = balanced_subset(np.asarray(y), n, seed, salt=7)
    keep = keep[np.argsort(np.asarray(y)[keep], kind="stable")]  # rows grouped by class
    return np.asarray(x[keep], np.uint8), np.asarray(y[keep])


# ---------------------------------------------------------------------------------- figures
def _figure(width_in: float, height_in: float, dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _png_bytes(fig, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


def stage_label(network_model, m: int) -> str:
    shape = network_model.output["features"][m].shape
    return f"F{m + 1}\n{shape[1]}x{shape[2]}"


def render_attention_png(grid: np.ndarray, layout: GridLayout, row_labels, column_labels, dpi: int = 100):
    """The labelled attention figure: ``(png bytes, panel boxes)``.

    The grid is drawn one to one (a grid pixel is a PNG pixel); the boxes map
    ``(row, network or None, stage or None)`` to ``(y0, y1, x0, x1)`` in PNG pixels.
    """
    from matplotlib.colors import ListedColormap

    h, w = grid.shape[:2]
    left, right, top, bottom = 1.9, 1.0, 0.9, 0.25  # inches of margin for the labels and the colorbar
    fig_w, fig_h = w / dpi + left + right, h / dpi + top + bottom
    fig = _figure(fig_w, fig_h, dpi)
    ax = fig.add_axes([left / fig_w, bottom / fig_h, (w / dpi) / fig_w, (h / dpi) / fig_h])
    ax.imshow(grid, interpolation="nearest", aspect="equal", extent=(0, w, h, 0))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    centres = [(layout.box(0)[2] + layout.box(0)[3]) / 2]
    xlabels = ["image"]
    for name in layout.networks:
        for m in range(layout.num_stages):
            _, _, x0, x1 = layout.box(0, name, m)
            centres.append((x0 + x1) / 2)
            xlabels.append(column_labels.get((name, m), f"F{m + 1}"))
        _, _, a, _ = layout.box(0, name, 0)
        _, _, _, b = layout.box(0, name, layout.num_stages - 1)
        pretty = "leader S0" if name == "leader" else name.replace("student", "student S")
        ax.text((a + b) / 2, -0.62 * dpi, pretty, ha="center", va="bottom", fontsize=10, fontweight="bold")
    ax.xaxis.tick_top()
    ax.set_xticks(centres)
    ax.set_xticklabels(xlabels, fontsize=7)
    ax.set_yticks([(layout.box(r)[0] + layout.box(r)[1]) / 2 for r in range(layout.num_images)])
    ax.set_yticklabels(row_labels, fontsize=7)
    ax.tick_params(length=0)
    cax = fig.add_axes([(left + w / dpi + 0.25) / fig_w, bottom / fig_h, 0.15 / fig_w, (h / dpi) / fig_h])
    cmap = ListedColormap(jet(np.linspace(0, 1, 256)), name="ffsd_jet")
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), cmap), cax=cax)
    bar.set_label("attention (per-map min-max)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    png = _png_bytes(fig, dpi)
    # Grid pixel (0, 0) lies at the axes' top-left corner in the PNG.
    png_h = int(round(fig_h * dpi))
    x_off = int(round(left * dpi))
    y_off = png_h - int(round((bottom * dpi) + h))
    boxes = {(r, None, None): _shift(layout.box(r), y_off, x_off) for r in range(layout.num_images)}
    for r in range(layout.num_images):
        for name in layout.networks:
            for m in range(layout.num_stages):
                boxes[(r, name, m)] = _shift(layout.box(r, name, m), y_off, x_off)
    return png, boxes


def _shift(box, dy, dx):
    y0, y1, x0, x1 = box
    return y0 + dy, y1 + dy, x0 + dx, x1 + dx


def _model_names(history, prefix=""):
    """Model names with an ``<prefix><model>/acc`` entry, students first."""
    found = []
    for h in history:
        for k in h:
            if k.startswith(prefix) and k.endswith("/acc"):
                name = k[len(prefix):-len("/acc")]
                if prefix == "" and k.startswith("val_"):
                    continue
                if name not in found:
                    found.append(name)
    order = ["students_mean", "ensemble", "ens_any", "fusion", "leader"]
    return sorted(found, key=lambda n: (order.index(n) + 1000 if n in order else 0, n))


def render_curves_png(history: list[dict], title: str = "", dpi: int = 100) -> bytes:
    """Four panels: train accuracy, test accuracy, train/test loss per model, train loss terms."""
    fig = _figure(13, 9, dpi)
    axes = fig.subplots(2, 2)
    names = list(dict.fromkeys(_model_names(history) + _model_names(history, "val_")))
    cmap = [f"C{i % 10}" for i in range(len(names))]
    colour = dict(zip(names, cmap))

    def series(key):
        pts = [(h["epoch"], h[key]) for h in history if key in h and h[key] is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    def plot(ax, key, label, name, style="-"):
        x, y = series(key)
        if x:
            ax.plot(x, y, style, marker="o", markersize=3, color=colour.get(name, "k"), label=label)
        return bool(x)

    ax = axes[0][0]
    for name in _model_names(history):
        plot(ax, f"{name}/acc", name, name)
    ax.set_title("train accuracy (running mean over the epoch)")
    ax = axes[0][1]
    for name in _model_names(history, "val_"):
        style = "--" if name in ("students_mean", "ensemble", "ens_any") else "-"
        plot(ax, f"val_{name}/acc", name, name, style)
    ax.set_title("test accuracy")
    ax = axes[1][0]
    loss_models = []
    for h in history:
        for k in h:
            if k.endswith("/loss") and not k.startswith("val_") and k[:-5] not in loss_models:
                loss_models.append(k[:-5])
    positive = True
    for name in loss_models:
        colour.setdefault(name, f"C{len(colour) % 10}")
        plot(ax, f"{name}/loss", f"{name} (train)", name)
        plot(ax, f"val_{name}/loss", f"{name} (test)", name, "--")
        positive &= all(v > 0 for v in series(f"{name}/loss")[1] + series(f"val_{name}/loss")[1])
    if loss_models and positive:
        ax.set_yscale("log")
    ax.set_title("loss per network: train (solid), test (dashed)")
    ax = axes[1][1]
    terms = []
    for h in history:
        for k in h:
            if "/" in k and not k.startswith("val_") and not k.endswith(("/acc", "/loss")) and k not in terms:
                terms.append(k)
    positive = True
    for i, key in enumerate(terms):
        x, y = series(key)
        ax.plot(x, y, marker="o", markersize=3, color=f"C{i % 10}", linestyle=["-", "--", ":", "-."][i // 10 % 4],
                label=key)
        positive &= all(v > 0 for v in y)
    if terms and positive:
        ax.set_yscale("log")
    ax.set_title("training loss terms (unweighted)")
    from matplotlib.ticker import MaxNLocator

    for row in axes:
        for ax in row:
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7, ncol=2 if len(ax.lines) > 8 else 1)
            else:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _png_bytes(fig, dpi)


# ---------------------------------------------------------------------------------- run dirs
class VisualizeError(ValueError):
    """Input the visualiser cannot use; the message is one actionable line."""


def visualize_run(run_dir: str, images: int = 8, output_dir: str | None = None, split: str = "test",
                  panel: int = DEFAULT_PANEL) -> dict:
    """Writes ``attention.png`` and ``curves.png`` of a run; returns their paths and the attention
    panels' boxes in PNG pixels (see ``render_attention_png``). Raises VisualizeError, writing
    nothing, on bad input."""
    from ffsd_tf import rundir
    from ffsd_tf.data import DataError

    if not os.path.exists(run_dir):
        raise VisualizeError(f"{run_dir} does not exist; pass the --output_dir of python -m ffsd_tf.run")
    if not os.path.isdir(run_dir):
        raise VisualizeError(f"{run_dir} is not a directory; pass the --output_dir of python -m ffsd_tf.run")
    if split not in ("test", "train"):
        raise VisualizeError(f"split must be 'test' or 'train', got {split!r}")
    if isinstance(images, bool) or not isinstance(images, (int, np.integer)) or images < 1:
        raise VisualizeError(f"images must be a positive integer, got {images!r}")
    output_dir = output_dir or os.path.join(run_dir, "figures")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise VisualizeError(f"--output_dir={output_dir} exists and is not a directory")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise VisualizeError("the PNG figures need matplotlib: pip install matplotlib") from None
    try:
        config, _ = rundir.load_config(run_dir)
        history_path = os.path.join(run_dir, rundir.HISTORY)
        if not os.path.isfile(history_path):
            raise VisualizeError(f"{run_dir} has no {rundir.HISTORY} (no epoch finished); train first")
        try:
            history = rundir.read_json(history_path)
        except ValueError as e:
            raise VisualizeError(f"{history_path} is not valid JSON ({e})") from None
        if not isinstance(history, list) or not all(isinstance(h, dict) and "epoch" in h for h in history):
            raise VisualizeError(f"{history_path} is not a list of per-epoch entries; it was not written by ffsd_tf.run")
        model, meta, ckpt = rundir.restore_model(run_dir)
        bundle = rundir.load_run_data(run_dir)
    except (rundir.RunDirError, DataError) as e:
        raise VisualizeError(" ".join(str(e).split())) from None

    pixels, labels = sample_images(bundle, images, split)
    inputs = bundle.normalize(pixels).numpy()
    grid, layout = attention_grid(model, inputs, pixels, panel)
    names = list(meta.get("class_names") or bundle.class_names or [])
    cls = lambda i: names[i] if 0 <= i < len(names) else str(i)  # noqa: E731
    predictions = np.argmax(model(inputs, training=False).numpy(), axis=-1)
    judge = "leader" if model.leader is not None else "S1"
    row_labels = [f"{cls(int(y))}\n{judge}: {cls(int(p))}" for y, p in zip(labels, predictions)]
    nets = dict(cohort_networks(model))
    column_labels = {(n, m): stage_label(nets[n], m) for n in layout.networks for m in range(layout.num_stages)}
    attention_png, boxes = render_attention_png(grid, layout, row_labels, column_labels)
    step = os.path.basename(ckpt)
    title = (f"{config.model} on {meta.get('name')}, {config.num_students} common students "
             f"({os.path.basename(os.path.abspath(run_dir))}, {step})")
    curves_png = render_curves_png(history, title=title)

    os.makedirs(output_dir, exist_ok=True)
    paths = {"attention": os.path.join(output_dir, "attention.png"), "curves": os.path.join(output_dir, "curves.png")}
    write_bytes_atomic(paths["attention"], attention_png)
    write_bytes_atomic(paths["curves"], curves_png)
    return {**paths, "boxes": boxes, "layout": layout, "grid": grid, "checkpoint": ckpt, "labels": labels}


# ---------------------------------------------------------------------------------- CLI
_FLAGS = flags.FlagValues()  # private: this tool's --output_dir is not the trainer's
flags.DEFINE_integer("images", 8, "How many images (rows) of the attention figure.", lower_bound=1, upper_bound=256,
                     flag_values=_FLAGS)
flags.DEFINE_string("output_dir", None, "Where the PNGs go (default: RUN_DIR/figures).", flag_values=_FLAGS)
flags.DEFINE_enum("split", "test", ["test", "train"], "Which split the images come from.", flag_values=_FLAGS)
flags.DEFINE_integer("panel", DEFAULT_PANEL, "Size in pixels of one panel of the attention figure.",
                     lower_bound=8, upper_bound=512, flag_values=_FLAGS)

USAGE = "usage: python -m ffsd_tf.visualize RUN_DIR [--images=8] [--output_dir=RUN_DIR/figures] [--split=test]"


def main(argv=None) -> int:
    args = parse_args(_FLAGS, list(sys.argv if argv is None else argv), __doc__, USAGE)
    if args is None:
        return 0
    if len(args) != 1:
        fail(USAGE if not args else f"one run directory expected, got {len(args)}; {USAGE}")
    tf.get_logger().setLevel("ERROR")
    from absl import logging

    logging.set_verbosity(logging.ERROR)
    try:
        out = visualize_run(args[0], images=_FLAGS.images, output_dir=_FLAGS.output_dir, split=_FLAGS.split,
                            panel=_FLAGS.panel)
    except VisualizeError as e:
        fail(str(e))
    except OSError as e:
        fail(f"{e.filename or ''}: {e.strerror or e}")
    print(f"Wrote {out['attention']} and {out['curves']}")
    return 0


def console_main():
    """The ``ffsd-visualize`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
