"""PNG figures: a profile's loader stages, thread scaling and step timeline (``selfsup
profile``), and a training run's curves from its metrics.jsonl (``selfsup plot``).

matplotlib is optional (the ``plot`` extra): without it the reports are written without
figures and the commands say how to get them.
"""

from __future__ import annotations

import json
from pathlib import Path

from selfsup.errors import CheckpointError, SelfsupError

MISSING = "figures need matplotlib: pip install 'selfsup[plot]' (or pip install matplotlib)"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    fig.clf()
    return path


def profile_figures(r: dict, out: Path) -> list[Path]:
    """stages.png, threads.png and timeline.png for a profile result ``r`` (empty without
    matplotlib)."""
    plt = _pyplot()
    if plt is None:
        return []
    paths = []
    st = r["loader_stages"]
    if st.get("stages_ms"):
        short = {"read": "read", "decode": "decode", "crop_resize": "crop + resize",
                 "augment": "colour, blur, mask,\nnormalise", "collate": "batching",
                 "device_augment": "batched augment\n(on the device)"}  # fmt: skip
        names = list(st["stages_ms"])
        labels, values = [short.get(n, n) for n in names], [st["stages_ms"][n] for n in names]
        colours = ["#4c72b0"] * len(names)
        if st.get("device_stages_on") == "gpu":  # GPU time, beside the host's (it overlaps)
            gpu = {"h2d": "GPU: copy to device", "device_augment": "GPU: augment"}
            for k, v in (st.get("device_stages_ms") or {}).items():
                if v is not None:
                    labels.append(gpu[k])
                    values.append(v)
                    colours.append("#dd8452")
        fig, ax = plt.subplots(figsize=(6.0, 2.8 + 0.3 * (len(labels) - 5)))
        ax.barh(labels, values, color=colours)
        ax.invert_yaxis()
        ax.set_xlabel("ms per image, one engine thread")
        ax.set_title(f"loader stages ({st['stages_sum_ms']:.2f} ms per image)")
        paths.append(_save(fig, out / "stages.png"))
    scaling = r["thread_scaling"]
    model = r["step"]["images_per_sec"]["model_only"]
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    ax.plot([t["threads"] for t in scaling], [t["images_per_sec"] for t in scaling], "o-",
            label="loader alone")  # fmt: skip
    ax.axhline(model, color="#c44e52", linestyle="--", label="model alone")
    ax.set_xlabel("engine threads")
    ax.set_ylabel("images/sec")
    ax.set_ylim(bottom=0)
    ax.set_xticks([t["threads"] for t in scaling])
    ax.legend()
    ax.set_title(f"{r['verdict']}")
    paths.append(_save(fig, out / "threads.png"))
    steps = r["step"].get("end_to_end_steps_ms", {})
    if steps:
        wait = steps.get("data_wait", [])
        compute = [sum(v) for v in zip(*(steps[k] for k in steps if k != "data_wait"),
                                       strict=True)]  # fmt: skip
        fig, ax = plt.subplots(figsize=(6.4, 2.8))
        x = range(1, len(compute) + 1)
        ax.bar(x, wait, color="#c44e52", label="waiting for data")
        ax.bar(x, compute, bottom=wait, color="#4c72b0", label="compute (forward, backward, "
               "optimizer)")  # fmt: skip
        ax.set_xlabel("timed end-to-end step")
        ax.set_ylabel("ms")
        ax.legend(fontsize="small")
        paths.append(_save(fig, out / "timeline.png"))
    plt.close("all")
    return paths


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise CheckpointError(
            f"{str(run_dir)!r} holds no metrics.jsonl; give a run directory made by selfsup "
            "pretrain, finetune or distill"
        )
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise CheckpointError(f"{path}: line {n} is not JSON") from None
    return records


def run_figures(run_dir: Path, out: Path | None = None) -> list[Path]:
    """curves.png of a run: loss, learning rate, images/sec and (when logged) k-NN top-1
    against the step (or epoch), from its metrics.jsonl."""
    plt = _pyplot()
    if plt is None:
        raise SelfsupError(MISSING)
    everything = read_metrics(run_dir)
    records = [r for r in everything if "loss" in r]
    knn = [r for r in everything if "knn_top1" in r and "event" not in r]
    if not records:
        raise CheckpointError(f"{run_dir / 'metrics.jsonl'} holds no loss records yet")
    x_key = "step" if "step" in records[0] else "epoch"
    panels = [("loss", "loss"), ("lr", "learning rate"), ("images_per_sec", "images/sec")]
    panels = [(k, t) for k, t in panels if any(k in r for r in records)]
    fig, axes = plt.subplots(1, len(panels) + bool(knn), figsize=(3.2 * (len(panels) + 1), 2.8))
    axes = list(axes) if hasattr(axes, "__len__") else [axes]
    for ax, (key, title) in zip(axes, panels, strict=False):
        pts = [(r[x_key], r[key]) for r in records if key in r]
        ax.plot(*zip(*pts, strict=True))
        ax.set_title(title)
        ax.set_xlabel(x_key)
    if knn:
        ax = axes[len(panels)]
        ax.plot([r.get(x_key, r.get("epoch")) for r in knn], [r["knn_top1"] for r in knn], "o-")
        ax.set_title("k-NN top-1 %")
        ax.set_xlabel(x_key)
    out = out or run_dir / "curves.png"
    path = _save(fig, Path(out))
    plt.close("all")
    return [path]
