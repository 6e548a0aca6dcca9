"""PNG charts (matplotlib, Agg backend): score trajectory, search tree, accuracy against k, soft-prompt training,
benchmark bars."""

from __future__ import annotations

import io
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from dspy_icl_opt.search.report import OptimizationReport

#: Figure size in inches and resolution: readable inline in a report, a few tens of kB.
FIGSIZE = (6.4, 3.6)
DPI = 110


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=DPI)
    _pyplot().close(fig)
    return buffer.getvalue()


def _integer_ticks() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def main_label(report: OptimizationReport) -> str | None:
    """The search's score label: the one most candidates carry other than ``val`` (the final choice's), else ``val``."""
    counts: dict[str, int] = {}
    for record in report.candidates:
        for label in record.scores:
            counts[label] = counts.get(label, 0) + 1
    if not counts:
        return None
    search = {label: n for label, n in counts.items() if label != "val"}
    if not search:
        return "val"
    return max(search, key=lambda label: (search[label], label == "train"))


def trajectory_points(report: OptimizationReport, label: str) -> list[tuple[int, float, float]]:
    """``(step, best score at this step, best so far)`` for every step with a scored candidate."""
    per_step: dict[int, float] = {}
    for record in report.candidates:
        if label in record.scores:
            per_step[record.step] = max(per_step.get(record.step, float("-inf")), record.scores[label])
    points, best = [], float("-inf")
    for step in sorted(per_step):
        best = max(best, per_step[step])
        points.append((step, per_step[step], best))
    return points


def trajectory_png(report: OptimizationReport, chosen: int | None = None) -> bytes | None:
    """Search scores by step with the best so far, validation scores beside them, the chosen candidate starred.

    ``None`` when nothing was scored.
    """
    label = main_label(report)
    if label is None:
        return None
    points = trajectory_points(report, label)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    scored = [(r.step, r.scores[label]) for r in report.candidates if label in r.scores]
    ax.scatter([s for s, _ in scored], [v for _, v in scored], alpha=0.35, s=18, label=f"candidates ({label})")
    ax.step([p[0] for p in points], [p[2] for p in points], where="post", color="C1",
            label=f"best {label} so far")
    if label != "val":
        validated = [(r.step, r.scores["val"]) for r in report.candidates if "val" in r.scores]
        if validated:
            ax.scatter([s for s, _ in validated], [v for _, v in validated], marker="s", s=30, facecolors="none",
                       edgecolors="C2", label="validation (val)")
    record = next((r for r in report.candidates if r.id == chosen), None)
    if record is not None:
        y = record.scores.get("val", record.scores.get(label))
        if y is not None:
            ax.scatter([record.step], [y], marker="*", s=220, color="C3", zorder=5,
                       label=f"chosen: candidate {record.id}")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.set_xlabel("step")
    ax.set_ylabel("score")
    ax.set_title(f"{report.optimizer}: search ({label}) and validation scores")
    ax.legend(loc="best", fontsize="small")
    return _png(fig)


def _tree_layout(nodes: Sequence[Mapping[str, Any]]) -> dict[int, tuple[float, float]]:
    """``id -> (depth, row)``: leaves take rows in depth-first order, a parent sits at its children's mean."""
    children: dict[Any, list[int]] = {}
    for node in nodes:
        children.setdefault(node.get("parent"), []).append(node["id"])
    depth = {node["id"]: node.get("depth", 0) for node in nodes}
    place: dict[int, tuple[float, float]] = {}
    rows = [0]

    def visit(i: int) -> float:
        below = [visit(c) for c in children.get(i, [])]
        row = sum(below) / len(below) if below else float(rows[0])
        rows[0] += 0 if below else 1
        place[i] = (depth[i], row)
        return row

    known = {node["id"] for node in nodes}
    for node in nodes:
        if node.get("parent") not in known:
            visit(node["id"])
    return place


def tree_png(tree: Mapping[str, Any], chosen: int | None = None) -> bytes | None:
    """A search tree (``report.extra["tree"]``) by depth, nodes coloured by reward, the best path drawn thick
    and the returned node starred; ``None`` without nodes."""
    nodes = list(tree.get("nodes") or [])
    if not nodes:
        return None
    place = _tree_layout(nodes)
    path = list(tree.get("best_path") or [])
    on_path = set(itertools.pairwise(path))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(FIGSIZE[0], max(FIGSIZE[1], 0.35 * len(nodes))))
    for node in nodes:
        if node.get("parent") in place:
            (x0, y0), (x1, y1) = place[node["parent"]], place[node["id"]]
            thick = (node["parent"], node["id"]) in on_path
            ax.plot([x0, x1], [y0, y1], color="C3" if thick else "0.6", linewidth=2.5 if thick else 0.8, zorder=1)
    xs, ys = zip(*(place[n["id"]] for n in nodes))
    dots = ax.scatter(xs, ys, c=[n.get("reward", 0.0) for n in nodes], cmap="viridis", s=60, zorder=2)
    for node in nodes:
        ax.annotate(f"{node['id']}", place[node["id"]], textcoords="offset points", xytext=(5, 4), fontsize=7)
    if chosen in place:
        ax.scatter(*place[chosen], marker="*", s=260, color="C3", zorder=3, label=f"returned: node {chosen}")
        ax.legend(loc="best", fontsize="small")
    fig.colorbar(dots, ax=ax, label="reward")
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.set_yticks([])
    ax.invert_yaxis()
    ax.set_xlabel("depth")
    ax.set_title("Search tree (best mean-reward path in red)")
    return _png(fig)


def k_curve_png(curve: Mapping[str, Sequence[Mapping[str, Any]]]) -> bytes | None:
    """Best and mean trial score against the number of demos k, per predictor, and the finalists' val score."""
    if not curve:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for i, (name, points) in enumerate(sorted(curve.items())):
        best = [(p["k"], p["best"]) for p in points if p.get("best") is not None]
        mean = [(p["k"], p["mean"]) for p in points if p.get("mean") is not None]
        if best:
            ax.plot(*zip(*best), marker="o", color=f"C{i}", label=f"{name} best of trials (optimistic)")
        if mean:
            ax.plot(*zip(*mean), marker=".", linestyle="--", color=f"C{i}", label=f"{name} mean")
        val = [(p["k"], p["val"]) for p in points if p.get("val") is not None]
        if val:
            ax.scatter(*zip(*val), marker="*", s=90, color=f"C{i}", label=f"{name} finalists' val", zorder=3)
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.set_xlabel("k (demos)")
    ax.set_ylabel("score")
    ax.set_title("Accuracy against k")
    ax.legend(loc="best", fontsize="small")
    return _png(fig)


def soft_prompt_png(info: Mapping[str, Any]) -> bytes | None:
    """A soft prompt's training curve: answer loss per epoch, and validation accuracy per epoch beside the start's."""
    epochs = [e for e in info.get("epochs", []) if e.get("loss") is not None]
    if not epochs:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    ax.plot([e["epoch"] for e in epochs], [e["loss"] for e in epochs], marker="o", color="C0", label="training loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean answer loss (nats/token)")
    ax.xaxis.set_major_locator(_integer_ticks())
    val_ax = ax.twinx()
    validated = [(e["epoch"], e["val"]) for e in epochs if e.get("val") is not None]
    if validated:
        val_ax.plot(*zip(*validated), marker="s", color="C2", label="validation accuracy")
    if info.get("start_val") is not None:
        val_ax.axhline(info["start_val"], color="C7", linestyle="--", label="program as given (validation)")
    val_ax.set_ylim(-0.05, 1.05)
    val_ax.set_ylabel("validation accuracy")
    lines = ax.get_legend_handles_labels()
    more = val_ax.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="best", fontsize="small")
    ax.set_title(f"Soft prompt ({info.get('method', '?')}): loss and validation by epoch")
    return _png(fig)


def bench_png(rows: Sequence[Mapping[str, Any]]) -> bytes:
    """Held-out accuracy per optimizer, with its task/prompt calls written above the bar."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(FIGSIZE[0], 1.2 * len(rows) + 2), FIGSIZE[1]))
    names = [str(r["optimizer"]) for r in rows]
    scores = [float(r["accuracy"]) if r.get("accuracy") is not None else 0.0 for r in rows]
    bars = ax.bar(names, scores, color=["C7" if r.get("family") == "baseline" else
                                        "C0" if r.get("family") == "ours" else "C2" for r in rows])
    for bar, row in zip(bars, rows):
        ax.annotate(f"{row.get('task_calls', 0)}t/{row.get('prompt_calls', 0)}p calls",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=7)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("held-out accuracy")
    ax.set_title("Optimizers on the same program, data, LMs and budget")
    ax.tick_params(axis="x", labelrotation=20)
    return _png(fig)
