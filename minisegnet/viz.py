"""Pictures of segmentations: colourised label maps, overlays, prediction grids, training curves.

Everything returns NumPy uint8 images or writes PNG files.  Figures are drawn on a
``matplotlib.figure.Figure`` with the Agg canvas directly, never through ``pyplot``: no global
backend is switched, nothing opens a window, and it works on a headless server or inside a
notebook alike.  matplotlib and Pillow are imported inside the functions that need them, so
``import minisegnet.viz`` stays cheap.

Colours default to CamVid's palette and class names (:mod:`minisegnet.data.camvid`); every
function takes ``palette`` ((P, 3) uint8, one colour per label value) and ``class_names`` to
draw other label sets.

Images may come as the loader gives them (float32 (3, H, W), normalised per channel: pass the
``mean`` and ``std`` used to normalise) or as stored on disk (uint8 (H, W, 3)); see
:func:`to_uint8_image`.

Two compositions serve the command line: :func:`training_figure` (a run's ``figure.png``;
:func:`run_figure` makes it from the model itself) and
:func:`save_prediction` (the files ``minisegnet predict`` writes for one image).  Figures may be
written to a path or to a binary file object, so a composition is assembled in memory and only
its result touches the disk (atomically: no half-written ``figure.png`` after a kill).
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np

from .backend import to_numpy

__all__ = [
    "to_uint8_image",
    "colorize",
    "overlay",
    "save_png",
    "save_label_png",
    "save_heatmap_png",
    "save_ids_png",
    "save_prediction",
    "class_legend",
    "prediction_grid",
    "training_curves",
    "training_figure",
    "run_figure",
    "stack_pngs",
    "read_log",
]


# --------------------------------------------------------------------------------------------
# arrays
# --------------------------------------------------------------------------------------------
def _default_palette() -> np.ndarray:
    from .data.camvid import PALETTE

    return np.asarray(PALETTE, dtype=np.uint8)


def _default_class_names() -> list[str]:
    from .data.camvid import CLASS_NAMES

    return [str(n) for n in CLASS_NAMES]


def _as_palette(palette) -> np.ndarray:
    palette = _default_palette() if palette is None else np.asarray(to_numpy(palette))
    if palette.ndim != 2 or palette.shape[1] != 3 or palette.shape[0] < 1:
        raise ValueError(f"palette: expected a (P, 3) array of RGB colours, got shape {palette.shape}")
    if palette.dtype != np.uint8:
        if palette.min() < 0 or palette.max() > 255:
            raise ValueError("palette: RGB values must lie in 0..255")
        palette = palette.astype(np.uint8)
    return palette


def colorize(labels, palette=None) -> np.ndarray:
    """Paint integer labels ``(..., H, W)`` with ``palette`` -> ``(..., H, W, 3)`` uint8.

    Label ``v`` gets ``palette[v]``; values outside ``0..len(palette)-1`` raise ValueError.
    (With the default palette this is :func:`minisegnet.data.camvid.colorize`.)
    """
    palette = _as_palette(palette)
    labels = to_numpy(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"colorize: expected an integer label array, got dtype {labels.dtype}")
    if labels.ndim < 2:
        raise ValueError(f"colorize: expected labels of shape (..., H, W), got shape {labels.shape}")
    if labels.size:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= len(palette):
            raise ValueError(
                f"colorize: label values must lie in 0..{len(palette) - 1} (the palette has {len(palette)} colours), "
                f"got values in {lo}..{hi}"
            )
    return palette[labels]


def to_uint8_image(image, mean=None, std=None) -> np.ndarray:
    """An (H, W, 3) uint8 RGB image from what a pipeline holds.

    Accepts (H, W, 3) or (3, H, W) (channels first, as the model sees it), or (H, W) grey;
    NumPy or CuPy.  uint8 passes through.  Floating point input is first denormalised when
    ``mean``/``std`` (per channel, in the image's units) are given: ``x * std + mean``.  Then,
    since a float image may be in ``[0, 1]`` or ``[0, 255]``: values within ``[0, 1]`` are scaled
    by 255, values within ``[0, 255]`` are kept, and anything else (a normalised image whose
    mean/std were not given) is stretched min-to-max so that it is at least visible.
    """
    x = to_numpy(image)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3:
        raise ValueError(f"to_uint8_image: expected (H, W, 3), (3, H, W) or (H, W), got shape {x.shape}")
    if x.shape[0] in (1, 3) and x.shape[-1] not in (1, 3):
        x = np.moveaxis(x, 0, -1)  # CHW -> HWC
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if x.shape[-1] != 3:
        raise ValueError(f"to_uint8_image: expected 1 or 3 channels, got shape {x.shape}")
    if x.dtype == np.uint8 and mean is None and std is None:
        return np.ascontiguousarray(x)
    x = x.astype(np.float64)
    if std is not None:
        x = x * np.asarray(to_numpy(std), dtype=np.float64).reshape(-1)
    if mean is not None:
        x = x + np.asarray(to_numpy(mean), dtype=np.float64).reshape(-1)
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if lo >= 0.0 and hi <= 1.0:
        x = x * 255.0
    elif not (lo >= 0.0 and hi <= 255.0):
        x = (x - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(x)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def overlay(image, labels, alpha: float = 0.5, palette=None, ignore_index: int | None = None) -> np.ndarray:
    """Blend the colourised ``labels`` over ``image``: ``(1 - alpha) * image + alpha * colour``, uint8.

    ``image``: anything :func:`to_uint8_image` takes (already denormalised: use it first for a
    normalised float image).  ``labels``: (H, W) integers.  Pixels whose label is ``ignore_index``
    (e.g. CamVid void, 11) keep the bare image.  The blend is rounded to the nearest integer.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay: alpha must lie in [0, 1], got {alpha}")
    img = to_uint8_image(image)
    labels = to_numpy(labels)
    if labels.shape != img.shape[:2]:
        raise ValueError(f"overlay: labels of shape {labels.shape} do not match the image's {img.shape[:2]}")
    colour = colorize(labels, palette).astype(np.float32)
    blend = (1.0 - alpha) * img.astype(np.float32) + alpha * colour
    out = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    if ignore_index is not None:
        keep = labels == ignore_index
        out[keep] = img[keep]
    return out


# --------------------------------------------------------------------------------------------
# PNG files
# --------------------------------------------------------------------------------------------
def _prepare_path(path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def save_png(path, image) -> Path:
    """Write an RGB image (anything :func:`to_uint8_image` takes) as a PNG; returns the path."""
    from PIL import Image

    path = _prepare_path(path)
    Image.fromarray(to_uint8_image(image)).save(path, format="PNG")
    return path


def save_label_png(path, labels, palette=None) -> Path:
    """Write (H, W) integer labels as a colourised RGB PNG (same H x W); returns the path.

    The colours are those of CamVid's annotated images, so the file can be compared with them
    by eye.  (The raw label values, as in ``trainannot/``, are not what this writes.)
    """
    labels = to_numpy(labels)
    if labels.ndim != 2:
        raise ValueError(f"save_label_png: expected one (H, W) label map, got shape {labels.shape}")
    return save_png(path, colorize(labels, palette))


def save_heatmap_png(path, values, cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None) -> Path:
    """Write an (H, W) float map (e.g. Bayesian SegNet's uncertainty) as a colour-mapped PNG.

    ``vmin``/``vmax`` default to the map's own minimum and maximum.
    """
    from matplotlib import colormaps

    values = np.asarray(to_numpy(values), dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"save_heatmap_png: expected an (H, W) map, got shape {values.shape}")
    lo = float(np.nanmin(values)) if vmin is None else float(vmin)
    hi = float(np.nanmax(values)) if vmax is None else float(vmax)
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    rgba = colormaps[cmap](np.clip(scaled, 0.0, 1.0), bytes=True)
    return save_png(path, rgba[..., :3])


def save_ids_png(path, labels) -> Path:
    """Write (H, W) class indices as a one-byte-a-pixel greyscale PNG (mode L), as CamVid's annotations."""
    from PIL import Image

    labels = np.asarray(to_numpy(labels))
    if labels.ndim != 2 or labels.dtype.kind not in "iub":
        raise ValueError(f"save_ids_png: expected one (H, W) integer label map, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"save_ids_png: label values must be 0..255 to fit a byte, got {labels.min()}..{labels.max()}")
    path = _prepare_path(path)
    Image.fromarray(labels.astype(np.uint8, copy=False)).save(path, format="PNG")
    return path


def save_prediction(out_dir, stem: str, image, labels, uncertainty=None, palette=None) -> dict:
    """The files of one segmented image, named after ``stem``; returns ``{kind: path}`` (strings).

    ``STEM_labels.png`` (the labels in the palette's colours), ``STEM_overlay.png`` (the colours
    blended over ``image``), ``STEM_ids.png`` (the raw class indices, one byte a pixel) and, with
    an ``uncertainty`` map, ``STEM_uncertainty.png`` (colour-mapped).  All have the size of
    ``labels``, which must be that of ``image``.
    """
    out_dir = Path(out_dir)
    files = {
        "labels": save_label_png(out_dir / f"{stem}_labels.png", labels, palette),
        "overlay": save_png(out_dir / f"{stem}_overlay.png", overlay(image, labels, palette=palette)),
        "ids": save_ids_png(out_dir / f"{stem}_ids.png", labels),
    }
    if uncertainty is not None:
        files["uncertainty"] = save_heatmap_png(out_dir / f"{stem}_uncertainty.png", uncertainty)
    return {kind: str(path) for kind, path in files.items()}


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------
def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig, path, dpi: int):
    """Save as PNG to ``path`` (a file path, or a binary file object: returned as it is)."""
    if not hasattr(path, "write"):
        path = _prepare_path(path)
    fig.savefig(path, dpi=dpi, format="png")
    return path


def _legend_handles(class_names, palette):
    from matplotlib.patches import Patch

    names = _default_class_names() if class_names is None else [str(n) for n in class_names]
    palette = _as_palette(palette)
    if len(names) > len(palette):
        raise ValueError(f"legend: {len(names)} class names but only {len(palette)} palette colours")
    if len(palette) == len(names) + 1:  # a last colour for the ignored label (CamVid: void, black)
        names = names + ["void"]
    return [
        Patch(facecolor=palette[i] / 255.0, edgecolor="black", linewidth=0.5, label=name)
        for i, name in enumerate(names)
    ]


def class_legend(path, class_names=None, palette=None, dpi: int = 100) -> Path:
    """Write a PNG with one coloured swatch per class name (the key to every colourised map).

    When the palette has one colour more than there are names, that last colour is labelled "void".
    """
    handles = _legend_handles(class_names, palette)
    ncol = 1 if len(handles) <= 4 else 2
    fig = _new_figure(1.9 * ncol + 0.3, 0.28 * math.ceil(len(handles) / ncol) + 0.4)
    fig.legend(handles=handles, loc="center", ncol=ncol, frameon=False, fontsize=9)
    return _save_figure(fig, path, dpi)


def prediction_grid(
    images,
    targets,
    predictions,
    path,
    class_names=None,
    palette=None,
    *,
    mean=None,
    std=None,
    uncertainty=None,
    max_rows: int = 8,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """A PNG with one row per sample: image | ground truth | prediction (| uncertainty), and a legend.

    ``path``: a file path, or a binary file object to write the PNG into.

    ``images``: (N, 3, H, W) float as the loader yields (give ``mean``/``std`` to denormalise),
    (N, H, W, 3) uint8, or a sequence of such images.  ``targets`` may be None (no ground truth
    column: plain prediction).  ``uncertainty``: optional (N, H, W) float maps (Bayesian SegNet)
    shown as a fourth column.  At most ``max_rows`` samples are drawn.  Returns the path.
    """
    palette = _as_palette(palette)
    n = min(len(images), len(predictions), max_rows)
    if n == 0:
        raise ValueError("prediction_grid: no images to draw")
    if targets is not None and len(targets) < n:
        raise ValueError(f"prediction_grid: {len(targets)} targets for {n} images")
    columns = ["image"] + (["ground truth"] if targets is not None else []) + ["prediction"]
    if uncertainty is not None:
        columns.append("uncertainty")
    first = to_uint8_image(images[0], mean, std)
    h, w = first.shape[:2]
    cell = 2.6  # inches per column
    fig = _new_figure(cell * len(columns), cell * h / w * n + 0.9 + (0.3 if title else 0.0))
    axes = fig.subplots(n, len(columns), squeeze=False)
    for i in range(n):
        panels = [to_uint8_image(images[i], mean, std)]
        if targets is not None:
            panels.append(colorize(targets[i], palette))
        panels.append(colorize(predictions[i], palette))
        for j, panel in enumerate(panels):
            axes[i, j].imshow(panel, interpolation="nearest")
        if uncertainty is not None:
            axes[i, -1].imshow(np.asarray(to_numpy(uncertainty[i]), dtype=np.float64), cmap="viridis")
        for j, ax in enumerate(axes[i]):
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=10)
    handles = _legend_handles(class_names, palette)
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    legend_rows = math.ceil(len(handles) / 6)
    fig.subplots_adjust(
        left=0.02, right=0.98, wspace=0.04, hspace=0.06,
        bottom=min(0.45, (0.25 * legend_rows + 0.1) / fig.get_figheight()),
        top=1.0 - (0.6 if title else 0.3) / fig.get_figheight(),
    )
    return _save_figure(fig, path, dpi)


def read_log(path) -> list[dict]:
    """The records of a JSON-lines metrics log (blank lines skipped).

    A half-written last line (a run killed while logging) is skipped with a warning naming the
    file: :func:`minisegnet.run_folder.read_log`.
    """
    from .run_folder import read_log

    return read_log(path)


_METRIC_LABELS = (
    ("mean_iou", "mIoU"),
    ("global_accuracy", "G"),
    ("class_accuracy", "C"),
    ("boundary_f1", "BF"),
)


def _metric(record: dict, name: str):
    for key in (f"val_{name}", name):
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def training_curves(log_records, path, title: str | None = None, dpi: int = 100) -> Path:
    """A PNG with the training loss (left) and the validation scores per epoch (right).

    ``log_records``: a list of dicts or the path of a JSON-lines log.  The keys read:

    * loss points: records with ``loss`` (or ``train_loss``), plotted against ``step`` if the
      record has one, else ``epoch``, else its position; a moving average is drawn over the raw
      curve when there are many points;
    * validation points: records with ``val_mean_iou`` / ``val_global_accuracy`` /
      ``val_class_accuracy`` / ``val_boundary_f1`` (or the same names without ``val_``, as in
      :meth:`minisegnet.metrics.ConfusionMatrix.summary`), plotted against ``epoch``.

    Other keys are ignored, so one log may hold both kinds of record.  ``path``: a file path,
    or a binary file object to write the PNG into.  Returns the path.
    """
    records = read_log(log_records) if isinstance(log_records, (str, Path)) else list(log_records)
    loss_x, loss_y, loss_axis = [], [], "record"
    for i, rec in enumerate(records):
        value = rec.get("loss", rec.get("train_loss"))
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        if "step" in rec:
            x, loss_axis = rec["step"], "step"
        elif "epoch" in rec:
            x, loss_axis = rec["epoch"], "epoch"
        else:
            x = i
        loss_x.append(float(x))
        loss_y.append(float(value))
    val = {name: ([], []) for name, _ in _METRIC_LABELS}
    for i, rec in enumerate(records):
        for name, _ in _METRIC_LABELS:
            value = _metric(rec, name)
            if value is not None:
                val[name][0].append(float(rec.get("epoch", i)))
                val[name][1].append(value)

    fig = _new_figure(10.0, 3.8)
    ax_loss, ax_val = fig.subplots(1, 2)
    if loss_y:
        ax_loss.plot(loss_x, loss_y, color="tab:blue", alpha=0.35 if len(loss_y) > 20 else 1.0, lw=1, label="loss")
        if len(loss_y) > 20:
            k = max(2, len(loss_y) // 20)
            smooth = np.convolve(loss_y, np.ones(k) / k, mode="valid")
            ax_loss.plot(loss_x[k - 1:], smooth, color="tab:blue", lw=2, label=f"mean of {k}")
        ax_loss.legend(fontsize=8)
    else:
        ax_loss.text(0.5, 0.5, "no loss recorded", ha="center", va="center", transform=ax_loss.transAxes)
    ax_loss.set_xlabel(loss_axis)
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("training loss")
    ax_loss.grid(alpha=0.3)

    drawn = False
    for name, label in _METRIC_LABELS:
        xs, ys = val[name]
        if ys:
            ax_val.plot(xs, ys, marker="o", ms=3, lw=1.5 if name == "mean_iou" else 1, label=label)
            drawn = True
    if drawn:
        ax_val.legend(fontsize=8)
        ax_val.set_ylim(0.0, 1.0)
    else:
        ax_val.text(0.5, 0.5, "no validation scores recorded", ha="center", va="center", transform=ax_val.transAxes)
    ax_val.set_xlabel("epoch")
    ax_val.set_ylabel("score")
    ax_val.set_title("validation")
    ax_val.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save_figure(fig, path, dpi)


# --------------------------------------------------------------------------------------------
# compositions
# --------------------------------------------------------------------------------------------
def stack_pngs(pngs, path) -> Path:
    """Stack PNG images (paths or binary file objects) vertically, centred on white, into ``path``.

    Written atomically: into ``.NAME.tmp`` beside ``path``, then renamed over it.
    """
    from PIL import Image

    parts = []
    for png in pngs:
        if hasattr(png, "seek"):
            png.seek(0)
        with Image.open(png) as im:
            parts.append(im.convert("RGB"))
    if not parts:
        raise ValueError("stack_pngs: no images to stack")
    width = max(im.width for im in parts)
    canvas = Image.new("RGB", (width, sum(im.height for im in parts)), "white")
    y = 0
    for im in parts:
        canvas.paste(im, ((width - im.width) // 2, y))
        y += im.height
    path = _prepare_path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    canvas.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def training_figure(log_records, images, targets, predictions, path, *, title: str | None = None,
                    max_rows: int = 4, mean=None, std=None, dpi: int = 100) -> Path:
    """A training run's figure: :func:`training_curves` above a :func:`prediction_grid`, one PNG.

    ``log_records``: the run's log (records or a path); ``images``/``targets``/``predictions``:
    a few validation samples as :func:`prediction_grid` takes them.  Both parts are drawn in
    memory; ``path`` is written once, atomically.  Returns the path.
    """
    curves, grid = io.BytesIO(), io.BytesIO()
    training_curves(log_records, curves, title=title, dpi=dpi)
    prediction_grid(images, targets, predictions, grid, max_rows=max_rows, mean=mean, std=std, dpi=dpi)
    return stack_pngs([curves, grid], path)


def run_figure(log_records, model, dataset, path, *, mean, std, device="cpu", title: str | None = None,
               max_rows: int = 4) -> Path:
    """:func:`training_figure` of a model during its training: its predictions of a few images of ``dataset``.

    Up to ``max_rows`` images, evenly spread over ``dataset`` (an :class:`~minisegnet.data.ArrayDataset`:
    uint8 ``images``, ``labels``), are normalised with ``mean``/``std``, moved to ``device`` and
    predicted under :func:`~minisegnet.no_grad` (which keeps the caches of a step under way as they are).

    At the labels' resolution, as the scores are: when ``dataset``'s labels are larger than its
    images (a :class:`~minisegnet.evaluation.ScoringSet`: CamVid's 360×480 labels beside images at
    the training size), the predicted class maps are laid over them by nearest neighbour, the rule
    :func:`~minisegnet.evaluate` scores with, and the image column shows the network's input
    enlarged the same way, so the three panels of a row are pixel for pixel the same grid.
    """
    from .backend import to_device
    from .data import normalize, resize_label
    from .grad_mode import no_grad

    rows = min(max_rows, len(dataset))
    picks = np.unique(np.linspace(0, len(dataset) - 1, rows).round().astype(np.intp))
    images, targets = dataset.images[picks], dataset.labels[picks]
    with no_grad():
        predictions = to_numpy(model.predict(to_device(normalize(images, mean, std), device)))
    label_size = tuple(targets.shape[1:3])
    if predictions.shape[1:3] != label_size:
        predictions = resize_label(predictions, label_size)
        images = np.moveaxis(resize_label(np.moveaxis(images, -1, 1), label_size), 1, -1)  # (N, H, W, 3)
    return training_figure(log_records, images, targets, predictions, path, title=title, max_rows=rows)
