"""The search tree of one solve, recorded below the two protocols, so strategies stay
plain: every `GenerateSteps` call expands a node into children, every `ScoreSteps` call
fills in scores. Kept nodes are the expanded ones and the results; the rest were pruned.
Greedy calls (lookahead rollouts, generated to score a candidate and then dropped) add
"lookahead" nodes under a fork of their candidate and count in no iteration's width.

A node's text is its ancestors' steps then its own, except for a fork that keeps only the
first steps of its parent (a revision's prefix, `cut_from_parent`): it holds its whole text.

Every solve counts the paths expanded per iteration (`Widths`: they feed the Solution's
record of what degraded). The tree itself is built only when asked for (`trace=True`): a beam
search at n=256 makes ~10,000 nodes, and an untraced solve is kept to one int per generated
path and one wrapper per `GenerateSteps` call (no object per child; benchmarks/README.md).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path as FilePath
from typing import Any

from asynctts.answers import extract_boxed, normalize
from asynctts.errors import BranchLost, format_key
from asynctts.protocols import Finish, GenerateSteps, Path, ScoreSteps

Key = tuple[int, ...]


@dataclass(slots=True)
class Node:
    key: Key
    parent: Key | None
    depth: int  # generation iterations from the root (a DVTS subtree's fork adds none)
    steps: tuple[str, ...] = ()  # the steps this node added to its parent
    finish: Finish = Finish.STEP
    scores: tuple[float, ...] = ()  # the PRM scores of this node's own steps
    generated_s: tuple[float, float] | None = None  # (start, end) since the solve began
    scored_s: tuple[float, float] | None = None
    expanded: bool = False
    result: bool = False
    lost: str | None = None
    lookahead: bool = False  # part of a greedy rollout: scored, never kept
    # a fork that keeps only the first steps of its parent (a revision's prefix): `steps`
    # holds those steps, the whole text of the node
    cut_from_parent: bool = False

    @property
    def state(self) -> str:
        if self.lost is not None:
            return "lost"
        if self.lookahead:
            return "lookahead"
        if self.result:
            return "result"
        if self.expanded or self.parent is None:
            return "kept"
        return "finished" if self.finish is not Finish.STEP else "pruned"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": format_key(self.key),
            "parent": None if self.parent is None else format_key(self.parent),
            "depth": self.depth,
            "steps": list(self.steps),
            "finish": self.finish.value,
            "scores": list(self.scores),
            "generated_s": self.generated_s,
            "scored_s": self.scored_s,
            "state": self.state,
            "lost": self.lost,
            "cut_from_parent": self.cut_from_parent,
        }


class Widths:
    """Paths expanded at each iteration, without the tree: one int per generated path.

    The iteration (depth) rule of every solve, traced or not: the root is at iteration 0, a
    child is one below the path it was generated from, and a fork of a path (a DVTS subtree's
    or a sample group's root) is at its parent's iteration.
    """

    __slots__ = ("_counts", "_depths")

    def __init__(self) -> None:
        self._counts: Counter[int] = Counter()
        self._depths: dict[Key, int] = {(): 0}

    def depth(self, key: Key) -> int:
        """The iteration of the path at `key`."""
        depth = self._depths.get(key)
        if depth is None:  # a fork: at its parent's iteration
            depth = self._depths[key] = self.depth(key[:-1])
        return depth

    def expanded(self, key: Key) -> int:
        """Count an expansion of the path at `key`; return its iteration."""
        depth = self.depth(key)
        self._counts[depth] += 1
        return depth

    def generated(self, children: Sequence[Path], depth: int) -> int:
        """Place the children of a path at iteration `depth`; return their iteration."""
        below = depth + 1
        for child in children:
            self._depths[child.key] = below
        return below

    def wrap(self, generate: GenerateSteps) -> GenerateSteps:
        """`generate`, counted (the whole cost of an untraced solve's bookkeeping)."""

        async def counted(
            path: Path, k: int, *, to_end: bool = False, greedy: bool = False
        ) -> list[Path]:
            if greedy:  # a lookahead rollout: not an expansion of the search
                return await generate(path, k, to_end=to_end, greedy=True)
            depth = self.expanded(path.key)
            children = await generate(path, k, to_end=to_end)
            self.generated(children, depth)
            return children

        return counted

    def iteration_widths(self) -> tuple[int, ...]:
        """Paths expanded at each iteration, from the root's (iteration 0) on."""
        counts = self._counts
        return tuple(counts[d] for d in range(max(counts, default=-1) + 1))

    def __repr__(self) -> str:
        return f"Widths({self.iteration_widths()})"


@dataclass
class Trace:
    """Records a solve's tree. `wrap` the two protocols, run the strategy, then `close`.

    `problem`, `strategy` and `n` say what was solved and `answer` what was chosen (set by
    `close`): the picture's title and the JSON carry them."""

    clock: Callable[[], float] = time.monotonic
    widths: Widths = field(default_factory=Widths)
    nodes: dict[Key, Node] = field(default_factory=dict)
    problem: str = ""
    strategy: str = ""
    n: int | None = None
    answer: str | None = None
    _t0: float = 0.0

    def __post_init__(self) -> None:
        self._t0 = self.clock()
        self.nodes[()] = Node(key=(), parent=None, depth=0)

    def _since(self) -> float:
        return self.clock() - self._t0

    def _node(self, path: Path) -> Node:
        node = self.nodes.get(path.key)
        if node is None:
            node = self._fork(path.key)
            if path.steps != self._steps_of(path.key[:-1]):  # a revision's cut of its parent
                node.steps, node.cut_from_parent = path.steps, True
        return node

    def _fork(self, key: Key) -> Node:
        """A new node forked from the node at key[:-1] (a DVTS subtree's or a sample group's
        root), with the forks above it that are not known yet."""
        parent = self.nodes.get(key[:-1]) or self._fork(key[:-1])
        node = Node(key=key, parent=parent.key, depth=self.widths.depth(key))
        self.nodes[key] = node
        return node

    def _steps_of(self, key: Key) -> tuple[str, ...]:
        """The steps of the path at `key`: its ancestors' (from the nearest cut), then its own."""
        parts: list[tuple[str, ...]] = []
        node: Node | None = self.nodes.get(key)
        while node is not None:
            parts.append(node.steps)
            node = (
                None if node.cut_from_parent or node.parent is None else self.nodes.get(node.parent)
            )
        return tuple(step for steps in reversed(parts) for step in steps)

    def wrap(self, generate: GenerateSteps, score: ScoreSteps) -> tuple[GenerateSteps, ScoreSteps]:
        async def traced_generate(
            path: Path, k: int, *, to_end: bool = False, greedy: bool = False
        ) -> list[Path]:
            node = self._node(path)
            if greedy:
                node.lookahead = True  # the rollout's fork of its candidate, or a rollout step
            else:
                node.expanded = True
                depth = self.widths.expanded(path.key)
            start = self._since()
            try:
                children = await generate(path, k, to_end=to_end, greedy=greedy)
            except BranchLost as lost:
                node.lost = lost.reason
                raise
            span = (start, self._since())
            below = node.depth + 1 if greedy else self.widths.generated(children, depth)
            for child in children:
                self.nodes[child.key] = Node(
                    key=child.key,
                    parent=path.key,
                    depth=below,
                    steps=child.steps[len(path.steps) :],
                    finish=child.finish,
                    generated_s=span,
                    lookahead=greedy,
                )
            return children

        async def traced_score(paths: Sequence[Path]) -> list[Path]:
            start = self._since()
            try:
                scored = await score(paths)
            except BranchLost as lost:
                for path in paths:
                    if path.key in self.nodes:
                        self.nodes[path.key].lost = lost.reason
                raise
            span = (start, self._since())
            for path in scored:
                # a rollout's scores also hold its candidate's, scored nowhere else
                node = self.nodes.get(path.key)
                end = len(path.scores)
                while node is not None:
                    node.scores = path.scores[end - len(node.steps) : end]
                    node.scored_s = span
                    if not node.lookahead or node.parent is None:
                        break
                    end -= len(node.steps)
                    node = self.nodes.get(node.parent)
            return scored

        return traced_generate, traced_score

    def close(self, results: Sequence[Path | BranchLost], *, answer: str | None = None) -> None:
        """Mark the strategy's results and lost branches, and record the chosen answer."""
        self.answer = answer
        for result in results:
            node = self.nodes.get(result.key)
            if node is None:
                continue
            if isinstance(result, BranchLost):
                node.lost = result.reason
            else:
                node.result = True

    def iteration_widths(self) -> tuple[int, ...]:
        """Paths expanded at each iteration, from the root's (iteration 0) on."""
        return self.widths.iteration_widths()

    def text_of(self, key: Key) -> str:
        """The whole text of the path at `key`: its ancestors' steps (from the nearest cut),
        then its own."""
        return "".join(self._steps_of(key))

    def answers(self) -> dict[Key, str | None]:
        """The answer of every finished node, normalised as a candidate's (None: no
        \\boxed{} in it), including finished paths the search did not keep (not rollouts)."""
        return {
            node.key: _normalized_boxed(self.text_of(node.key))
            for node in self.nodes.values()
            if node.finish is not Finish.STEP and not node.lookahead
        }

    def to_dict(self) -> dict[str, Any]:
        answers = self.answers()
        return {
            "problem": self.problem,
            "strategy": self.strategy,
            "n": self.n,
            "answer": self.answer,
            "widths": list(self.iteration_widths()),
            "nodes": [
                {**node.to_dict(), "answer": answers.get(node.key)} for node in self.nodes.values()
            ],
        }

    def save_json(self, path: str | FilePath) -> None:
        FilePath(path).write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")

    def render(self, path: str | FilePath, *, title: str | None = None) -> None:
        """Draw the tree to an image file (PNG, SVG, PDF: by suffix) with matplotlib: one
        row per iteration, nodes coloured by their last step's PRM score, results ringed,
        pruned nodes faded, lost nodes crossed, finished paths labelled with their answer;
        titled with the problem, strategy, n and chosen answer unless `title` is given.
        Needs `pip install 'asynctts[eval]'`."""
        from asynctts.trace_plot import draw_tree

        draw_tree(self, FilePath(path), title=title)


def _normalized_boxed(text: str) -> str | None:
    boxed = extract_boxed(text)
    return None if boxed is None else normalize(boxed)
