"""Draw a search tree with matplotlib (imported here, lazily, so the core stays light).

Rules:
- One row per iteration. Finished paths are labelled with their answer under the node (the
  chosen answer in red), so a finished leaf gets a full column; a pruned leaf needs no
  label and gets a narrow one: the picture stays readable at n=64 without growing wide.
- The title says what was solved (the problem, shortened to one line), by which strategy at
  which n, and the chosen answer. The legend and the colour bar sit outside the axes.
- Text is drawn as text: "$" is escaped, so a problem's LaTeX never switches matplotlib into
  math mode (an unmatched "$" would fail to render).
"""

from __future__ import annotations

import textwrap
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from asynctts.errors import format_key
from asynctts.protocols import Finish
from asynctts.trace import Key, Node, Trace

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["draw_tree", "figure_of", "layout", "leaf_label", "title_of"]

CHOSEN_COLOR = "crimson"
_OTHER_COLOR = "0.25"
_LABEL_CHARS = 18  # longer answers are cut, with an ellipsis
_TITLE_POINTS = 12.0  # matplotlib's default axes title size
_NARROW = 0.45  # column width of an unlabelled leaf; a labelled one gets 1
_INCH_PER_COLUMN = 0.16
_INCH_PER_ROW = 0.8
_LABEL_POINTS = 8.0
_CHAR_POINTS = 0.6 * _LABEL_POINTS  # a label character's width, roughly
_LABEL_GAP_POINTS = 4.0  # between two labels side by side
_LEGEND_ENTRY_INCH = 1.7
_MARGIN_INCH = 2.5  # the axis labels and the colour bar


def layout(
    nodes: Sequence[Node], column: Callable[[Node], float] = lambda node: 1.0
) -> dict[Key, tuple[float, float]]:
    """x: leaves left to right in tree order, each `column(leaf)` wide, a parent centred
    over its children; y: minus the depth. Iterative, so deep trees need no recursion."""
    children: dict[Key, list[Key]] = defaultdict(list)
    by_key = {node.key: node for node in nodes}
    for node in nodes:
        if node.parent is not None:
            children[node.parent].append(node.key)
    x: dict[Key, float] = {}
    right = 0.0  # where the next leaf's column starts
    # depth-first, children in key order; a node is placed after all its children
    stack: list[tuple[Key, bool]] = [(n.key, False) for n in nodes if n.parent is None][::-1]
    while stack:
        key, children_done = stack.pop()
        kids = sorted(children.get(key, []))
        if not kids:
            width = column(by_key[key])
            x[key], right = right + width / 2, right + width
        elif children_done:
            x[key] = (x[kids[0]] + x[kids[-1]]) / 2
        else:
            stack.append((key, True))
            stack.extend((kid, False) for kid in reversed(kids))
    return {key: (value, -float(by_key[key].depth)) for key, value in x.items()}


def _plain(text: str) -> str:
    return text.replace("$", r"\$")


def _cut(text: str, chars: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= chars else text[: chars - 1] + "…"


def leaf_label(node: Node, answer: str | None) -> str:
    """What a finished node is labelled with: its answer, or why it has none."""
    if answer is not None:
        return _cut(answer, _LABEL_CHARS)
    return "(cut)" if node.finish is Finish.LENGTH else "(no answer)"


def title_of(trace: Trace, width_inch: float = 7.0) -> str:
    """The problem, shortened to at most two lines of a `width_inch` wide picture; then the
    strategy, n and the chosen answer."""
    chars = max(40, int(width_inch * 72 / (0.55 * _TITLE_POINTS)) - 10)
    problem = " ".join(trace.problem.split()) or "search tree"
    lines = textwrap.wrap(problem, chars, max_lines=2, placeholder=" …")
    what = [part for part in (trace.strategy, None if trace.n is None else f"n={trace.n}") if part]
    answer = "(none)" if trace.answer is None else _cut(trace.answer, 40)
    return "\n".join([*lines, ", ".join([*what, f"answer: {answer}"])])


def figure_of(trace: Trace, *, title: str | None = None) -> Figure:
    """The tree's picture as a matplotlib Figure (not attached to pyplot)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    nodes = list(trace.nodes.values())
    answers = trace.answers()
    finished = [n for n in nodes if n.key in answers and n.state != "lost"]
    labelled = {n.key for n in finished}
    place = layout(nodes, lambda node: 1.0 if node.key in labelled else _NARROW)
    columns = max((x for x, _ in place.values()), default=0.0) + 1.0
    depth = max((n.depth for n in nodes), default=0)
    labels = {n.key: leaf_label(n, answers[n.key]) for n in finished}
    longest = max((len(text) for text in labels.values()), default=0)
    width_inch = max(7.0, min(60.0, _INCH_PER_COLUMN * columns + _MARGIN_INCH))
    column_inch = (width_inch - _MARGIN_INCH) / columns  # more than asked in a small tree
    # labels run down the page unless they fit their column across, with a gap
    upright = longest * _CHAR_POINTS + _LABEL_GAP_POINTS > column_inch * 72
    label_inch = longest * _CHAR_POINTS / 72 if upright else _LABEL_POINTS / 72
    label_rows = 0.3 + label_inch / _INCH_PER_ROW  # room below the deepest row
    fig = Figure(
        figsize=(width_inch, _INCH_PER_ROW * (depth + 1 + label_rows) + 2.4),
        layout="constrained",
    )
    ax = fig.add_subplot()
    for node in nodes:
        if node.parent is not None and node.parent in place:
            (x0, y0), (x1, y1) = place[node.parent], place[node.key]
            kept = node.state in ("kept", "result")
            ax.plot([x0, x1], [y0, y1], color="0.3" if kept else "0.82", lw=0.7, zorder=1)
    scored = None
    for faded in (True, False):  # pruned, finished-but-unused and lookahead nodes drawn faint
        group = [n for n in nodes if (n.state in ("pruned", "finished", "lookahead")) == faded]
        with_score = [n for n in group if n.scores]
        without = [n for n in group if not n.scores]
        alpha = 0.35 if faded else 1.0
        if with_score:
            scored = ax.scatter(
                [place[n.key][0] for n in with_score],
                [place[n.key][1] for n in with_score],
                c=[n.scores[-1] for n in with_score],
                cmap="viridis",
                vmin=0.0,
                vmax=1.0,
                s=20,
                alpha=alpha,
                zorder=2,
            )
        if without:
            ax.scatter(
                [place[n.key][0] for n in without],
                [place[n.key][1] for n in without],
                color="0.55",
                s=12,
                alpha=alpha,
                zorder=2,
            )
    if scored is not None:
        fig.colorbar(scored, ax=ax, label="PRM score of the node's last step", shrink=0.8)
    results = [n for n in nodes if n.state == "result" and n.key in place]
    ax.scatter(
        [place[n.key][0] for n in results],
        [place[n.key][1] for n in results],
        s=75,
        facecolors="none",
        edgecolors=CHOSEN_COLOR,
        linewidths=1.2,
        zorder=3,
    )
    lost = [n for n in nodes if n.state == "lost" and n.key in place]
    ax.scatter(
        [place[n.key][0] for n in lost],
        [place[n.key][1] for n in lost],
        marker="x",
        color="black",
        s=40,
        zorder=3,
    )
    for node in finished:
        x, y = place[node.key]
        chosen = trace.answer is not None and answers[node.key] == trace.answer
        ax.text(
            x,
            y - 0.18,
            _plain(labels[node.key]),
            rotation=90 if upright else 0,
            ha="center",
            va="top",
            fontsize=_LABEL_POINTS,
            color=CHOSEN_COLOR if chosen else _OTHER_COLOR,
            fontweight="bold" if chosen else "normal",
            zorder=4,
            gid=format_key(node.key),  # names the node (an id in SVG)
        )
    ax.set_xlim(-0.5, columns - 0.5)
    ax.set_ylim(-(depth + label_rows), 0.45)
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_ylabel("iteration")
    ax.set_yticks([-d for d in range(depth + 1)], [str(d) for d in range(depth + 1)])
    text = title if title is not None else title_of(trace, width_inch)
    ax.set_title(_plain(text), loc="left")
    handles = [
        Line2D([], [], color="0.3", lw=0.9, label="expanded"),
        Line2D([], [], color="0.82", lw=0.9, label="pruned"),
        Line2D(
            [],
            [],
            ls="",
            marker="o",
            markersize=8,
            markerfacecolor="none",
            markeredgecolor=CHOSEN_COLOR,
            label="result (a candidate)",
        ),
        Line2D([], [], ls="", marker="x", color="black", label="lost"),
        Line2D([], [], ls="", marker="$a$", color=CHOSEN_COLOR, label="chosen answer"),
        Line2D([], [], ls="", marker="$a$", color=_OTHER_COLOR, label="other answer"),
    ]
    columns_of_legend = max(2, min(len(handles), int(width_inch / _LEGEND_ENTRY_INCH)))
    fig.legend(handles=handles, loc="outside lower center", ncols=columns_of_legend, frameon=False)
    return fig


def draw_tree(trace: Trace, path: Path, *, title: str | None = None) -> None:
    """Save `figure_of(trace)` to `path` (the format from its suffix)."""
    figure_of(trace, title=title).savefig(path, dpi=110)
