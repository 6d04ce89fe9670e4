"""What a chapter (a notebook) imports besides the package's algorithms: set-up, glue, explorers.

::

    from fidobook.chapter import chapter_setup, glue_number
    DEVICE = chapter_setup(seed, device)   # threads, determinism, seed; the torch.device
    glue_number("accuracy", 100 * acc, 1)  # a number for the prose, {glue:text}`accuracy`

The build tooling (papermill, jupyter-book, Chromium) lives in :mod:`fidobook.book`; a chapter
never needs it.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["chapter_setup", "resolve_device", "glue_number", "static_explorer", "record",
           "RECORD_ENV"]

#: Set by the book pipeline for each executed chapter: where :func:`record` appends.
RECORD_ENV = "FIDOBOOK_RECORD"



def chapter_setup(seed: int = 0, device: str = "auto", threads: int | None = 2):
    """Makes a chapter's results reproducible; returns the resolved ``torch.device``.

    Fixes torch's intra-op thread count (float sums then reproduce bit for bit on CPU),
    switches on deterministic algorithms, and seeds torch's global generator. Chapters should
    still pass explicit generators to every random call.

    Args:
        seed (int, optional): seed of the global generator. Default: 0.
        device (str, optional): ``"auto"`` (CUDA when available, else CPU), ``"cpu"``,
            ``"cuda"``, ... Default: ``"auto"``.
        threads (int, optional): intra-op threads; ``None`` leaves torch's choice. Default: 2.

    Returns:
        torch.device: the device to compute on.
    """
    import torch

    if threads is not None:
        torch.set_num_threads(int(threads))
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    resolved = resolve_device(device)
    # On CUDA a few kernels have no deterministic version: warn there instead of failing.
    torch.use_deterministic_algorithms(True, warn_only=resolved.type == "cuda")
    torch.manual_seed(seed)
    return resolved


def resolve_device(device):
    """``torch.device`` for ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda[:N]"``.

    Raises:
        ValueError: an unknown device string, or CUDA asked for where there is none (or fewer
            devices than the index).
    """
    import torch

    if isinstance(device, torch.device):
        device = str(device)

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from e
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} requested, but CUDA is not available on this "
                             f"machine (torch.cuda.is_available() is False); use 'cpu' or 'auto'")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device: {device!r} requested, but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    return resolved


def glue_number(name: str, value, digits: int | None = 3) -> None:
    """Glues a number for the chapter's prose as a plain Python number (never a numpy or torch
    scalar, whose repr would leak into the text); ``digits`` 0 or None glues an int."""
    from myst_nb import glue

    value = round(float(value), digits) if digits else int(round(float(value)))
    glue(name, value, display=False)


def static_explorer(images: Mapping[str, bytes], description: str = "", *,
                    initial: str | None = None, width: int | None = None):
    """A slider over pre-rendered images that also works in the static book (no kernel).

    ``interact`` recomputes in the kernel, so the static HTML can only show the state it was
    saved in. Here every image is rendered up front into an ``Image`` inside a ``Stack``, and
    the slider's index is linked to the stack in the browser (``jslink``): moving the slider
    in the built book switches images.

    Args:
        images (Mapping[str, bytes]): slider label -> PNG bytes, in slider order.
        description (str, optional): the slider's label.
        initial (str, optional): the label shown first. Default: the first.
        width (int, optional): displayed image width in px.

    Returns:
        ipywidgets.VBox: the slider above the stack.
    """
    import ipywidgets as widgets

    if not images:
        raise ValueError("images: expected at least one image, got none")
    labels = list(images)
    if initial is None:
        initial = labels[0]
    if initial not in labels:
        raise ValueError(f"initial: expected one of {labels}, got {initial!r}")
    layout = widgets.Layout(width=f"{width}px") if width else widgets.Layout()
    pictures = [widgets.Image(value=images[k], format="png", layout=layout) for k in labels]
    stack = widgets.Stack(pictures, selected_index=labels.index(initial))
    slider = widgets.SelectionSlider(options=labels, value=initial, description=description,
                                     continuous_update=True,
                                     style={"description_width": "initial"},
                                     layout=widgets.Layout(width="520px"))
    widgets.jslink((slider, "index"), (stack, "selected_index"))
    return widgets.VBox([slider, stack])




def record(result) -> None:
    """Notes an experiment result a chapter used, for its run record and the appendix.

    Under the book pipeline (``$FIDOBOOK_RECORD`` set) this appends one JSON line (experiment,
    spec, context, cache key, and the result's numeric scalars) to that file; the pipeline moves
    it into ``<chapter>.run.json``. Elsewhere (an interactive session) it does nothing.

    Args:
        result (fidobook.experiments.Result): what ``fidobook.experiments.run`` returned.
    """
    import json

    from .experiments import Result

    if not isinstance(result, Result):
        raise TypeError(f"result: expected a fidobook.experiments.Result, got {type(result).__name__}")
    path = os.environ.get(RECORD_ENV)
    if not path:
        return
    line = {"experiment": result.name, "spec": result.spec, "context": result.context,
            "key": result.key, "numbers": result.numbers()}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line, allow_nan=True) + "\n")
