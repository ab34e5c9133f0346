"""Draw a search tree with matplotlib (imported here, lazily, so the core stays light)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from asynctts.trace import Key, Node


def layout(nodes: Sequence[Node]) -> dict[Key, tuple[float, float]]:
    """x: leaves left to right in tree order, a parent centred over its children;
    y: minus the depth. Iterative, so deep trees need no recursion."""
    children: dict[Key, list[Key]] = defaultdict(list)
    depth: dict[Key, int] = {}
    for node in nodes:
        depth[node.key] = node.depth
        if node.parent is not None:
            children[node.parent].append(node.key)
    x: dict[Key, float] = {}
    next_leaf = 0.0
    # depth-first, children in key order; a node is placed after all its children
    stack: list[tuple[Key, bool]] = [(n.key, False) for n in nodes if n.parent is None][::-1]
    while stack:
        key, children_done = stack.pop()
        kids = sorted(children.get(key, []))
        if not kids:
            x[key], next_leaf = next_leaf, next_leaf + 1.0
        elif children_done:
            x[key] = (x[kids[0]] + x[kids[-1]]) / 2
        else:
            stack.append((key, True))
            stack.extend((kid, False) for kid in reversed(kids))
    return {key: (value, -float(depth[key])) for key, value in x.items()}


def draw_tree(nodes: Sequence[Node], path: Path, *, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    place = layout(nodes)
    width = max(6.0, min(40.0, 0.12 * sum(1 for n in nodes if n.key in place)))
    depth = max((n.depth for n in nodes), default=0)
    fig, ax = plt.subplots(figsize=(width, max(3.0, 0.6 * (depth + 2))))
    for node in nodes:
        if node.parent is not None and node.parent in place:
            (x0, y0), (x1, y1) = place[node.parent], place[node.key]
            kept = node.state in ("kept", "result")
            ax.plot([x0, x1], [y0, y1], color="0.3" if kept else "0.85", lw=0.6, zorder=1)
    for faded in (True, False):  # pruned and finished-but-unused nodes drawn faint
        group = [n for n in nodes if n.scores and (n.state in ("pruned", "finished")) == faded]
        points = ax.scatter(
            [place[n.key][0] for n in group],
            [place[n.key][1] for n in group],
            c=[n.scores[-1] for n in group],
            cmap="viridis",
            vmin=0.0,
            vmax=1.0,
            s=18,
            alpha=0.3 if faded else 1.0,
            zorder=2,
        )
    fig.colorbar(points, ax=ax, label="PRM score of the node's last step")
    results = [n for n in nodes if n.state == "result"]
    ax.scatter(
        [place[n.key][0] for n in results],
        [place[n.key][1] for n in results],
        s=70,
        facecolors="none",
        edgecolors="crimson",
        linewidths=1.2,
        zorder=3,
        label="result",
    )
    lost = [n for n in nodes if n.state == "lost"]
    ax.scatter(
        [place[n.key][0] for n in lost],
        [place[n.key][1] for n in lost],
        marker="x",
        color="black",
        s=40,
        zorder=3,
        label="lost",
    )
    ax.set_xticks([])
    ax.set_ylabel("iteration")
    ax.set_yticks([-d for d in range(depth + 1)], [str(d) for d in range(depth + 1)])
    ax.set_title(title or "search tree")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
