"""The search trace and the record of what degraded, from scripted in-memory searches."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path as FilePath

from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure

from asynctts.api import run_search
from asynctts.equivalence import Equivalence
from asynctts.errors import format_key
from asynctts.ledger import Ledger
from asynctts.protocols import Finish, Path
from asynctts.search.beam_search import BeamSearch
from asynctts.search.best_of_n import BestOfN
from asynctts.search.dvts import DVTS
from asynctts.search.strategy import Strategy
from asynctts.solution import Solution
from asynctts.testing.fakes import FakePolicy, FakePRM
from asynctts.trace import Node, Widths
from asynctts.trace_plot import CHOSEN_COLOR, figure_of, leaf_label, title_of


def policy_ending_at(depth_of_end: dict[tuple[int, ...], int], default: int) -> FakePolicy:
    """Paths whose key starts with a listed prefix end after that many steps."""

    def step(path: Path, rng: random.Random) -> tuple[str, Finish]:
        limit = next((d for k, d in depth_of_end.items() if path.key[: len(k)] == k), default)
        if len(path.steps) + 1 >= limit:
            return f"so $\\boxed{{{path.key[0]}}}$", Finish.EOS
        return f"step {len(path.steps)} of {path.key}\n\n", Finish.STEP

    return FakePolicy(step)


async def search(
    strategy: Strategy,
    n: int,
    policy: FakePolicy,
    prm: FakePRM,
    equivalence: Equivalence,
    problem: str = "?",
) -> Solution:
    return await run_search(
        problem_id="t",
        problem=problem,
        strategy=strategy,
        n=n,
        generate=policy,
        score=prm,
        equivalence=equivalence,
        ledger=Ledger(),
        keep_trace=True,
    )


async def test_beam_search_trace_marks_kept_pruned_and_results(
    equivalence: Equivalence, tmp_path: FilePath
) -> None:
    prm = FakePRM(lambda path, i: 0.9 if path.key[:2] == (0, 0) else 0.4)
    sol = await search(
        BeamSearch(width=2, max_depth=4), 4, policy_ending_at({}, 3), prm, equivalence
    )
    assert sol.trace is not None
    nodes = {n.key: n for n in sol.trace.nodes.values()}
    assert nodes[()].state == "kept" and nodes[(0,)].state == "kept"  # root and its forks
    assert nodes[(0, 0)].expanded and nodes[(0, 0)].scores == (0.9,)
    assert nodes[(0, 0)].steps == ("step 0 of (0, 0)\n\n",)
    assert nodes[(1, 1)].state == "pruned"
    results = sorted(k for k, n in nodes.items() if n.state == "result")
    assert results == sorted(tuple(map(int, c.branch.split("."))) for c in sol.candidates)
    # two root forks, then two survivors twice (the third step ends every path)
    assert sol.trace.iteration_widths() == (2, 2, 2)
    assert sol.degradation.widths == (2, 2, 2) and sol.degradation.planned_width == 2
    assert not sol.degradation.degraded and sol.degradation.narrowed == ()

    saved = tmp_path / "trace.json"
    sol.trace.save_json(saved)
    data = json.loads(saved.read_text())
    assert data["widths"] == [2, 2, 2]
    by_id = {n["id"]: n for n in data["nodes"]}
    assert by_id["0.0"]["parent"] == "0" and by_id["0"]["parent"] == "root"
    assert by_id["1.1"]["state"] == "pruned"
    assert by_id["0.0"]["generated_s"][0] <= by_id["0.0"]["scored_s"][0]

    picture = tmp_path / "trace.png"
    sol.trace.render(picture, title="beam search")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_beam_width_falling_below_plan_is_recorded(equivalence: Equivalence) -> None:
    # fork 1's children end at once, (0, 1)'s at step 2, (0, 0, 1)'s and (0, 0, 0, 1) at
    # step 3: after iteration 2 a single path is left to expand
    limits = {(1,): 1, (0, 1): 2, (0, 0, 1): 3, (0, 0, 0, 1): 3}
    prm = FakePRM(lambda path, i: 0.5)
    sol = await search(
        BeamSearch(width=2, max_depth=8), 4, policy_ending_at(limits, 5), prm, equivalence
    )
    # the lone path gets all n = 4 children (one request); two of them survive, so the
    # width recovers at iteration 4
    assert sol.degradation.widths == (2, 2, 2, 1, 2)
    assert sol.degradation.narrowed == (3,)
    assert sol.degradation.notes() == ["iteration 3: 1 of 2 paths expanded"]
    assert not sol.degradation.degraded  # narrowing by finishing is not a loss


async def test_lost_and_cut_branches_are_recorded(equivalence: Equivalence) -> None:
    def step(path: Path, rng: random.Random) -> tuple[str, Finish]:
        if path.key[:2] == (0, 1):
            return "a step that ran out of tokens", Finish.LENGTH
        return "$\\boxed{1}$", Finish.EOS

    policy = FakePolicy(step, fail=lambda path: path.key == (1,))
    prm = FakePRM(lambda path, i: 0.5, fail=lambda path: path.key == (2, 0))
    sol = await search(BestOfN(per_request=2), 6, policy, prm, equivalence)
    d = sol.degradation
    assert (d.lost_generating, d.lost_scoring, d.cut, d.unfinished) == (2, 1, 1, 0)
    assert d.degraded and d.planned_width is None
    assert d.notes() == [
        "3 branches lost (2 generating, 1 scoring)",
        "1 candidates cut by max_tokens or the context length",
    ]
    assert sol.to_dict()["degradation"]["notes"] == d.notes()


async def test_dvts_unfinished_subtree_is_recorded_not_a_candidate(
    equivalence: Equivalence,
) -> None:
    """A subtree whose last expansion finished nothing: only a policy that ignores `to_end`
    does this, but the result must still say so rather than pass it off as a candidate."""

    def step(path: Path, rng: random.Random) -> tuple[str, Finish]:
        if path.key[0] == 1:
            return "more\n\n", Finish.STEP
        return "$\\boxed{2}$", Finish.EOS

    class IgnoresToEnd(FakePolicy):
        async def __call__(
            self, path: Path, k: int, *, to_end: bool = False, greedy: bool = False
        ) -> list[Path]:
            return await super().__call__(path, k, to_end=False, greedy=greedy)

    sol = await search(
        DVTS(width=2, max_depth=2), 4, IgnoresToEnd(step), FakePRM(lambda p, i: 0.5), equivalence
    )
    assert sol.degradation.unfinished == 1
    assert {c.branch.split(".")[0] for c in sol.candidates} == {"0"}
    assert "1 paths hit the iteration limit unfinished" in sol.degradation.notes()


async def test_widths_put_forks_at_their_parents_iteration_and_children_one_below() -> None:
    async def generate(path: Path, k: int, *, to_end: bool = False) -> list[Path]:
        return [path.extend(i, ("step\n\n",), Finish.STEP) for i in range(k)]

    widths = Widths()
    counted = widths.wrap(generate)
    root = Path()
    # two forks of the root (DVTS subtrees): both expanded at iteration 0
    first, _ = await counted(root.fork(0), 2)
    await counted(root.fork(1), 2)
    # a child, and a fork of that child (a subtree started below the root)
    await counted(first, 3)
    await counted(first.fork(7), 1)
    assert widths.iteration_widths() == (2, 2)
    depths = {(): 0, (0,): 0, (0, 1): 1, (0, 0, 2): 2, (0, 0, 7): 1}
    assert {key: widths.depth(key) for key in depths} == depths


async def test_traced_nodes_are_at_the_iterations_widths_counts(equivalence: Equivalence) -> None:
    prm = FakePRM(lambda path, i: 0.5)
    sol = await search(DVTS(width=2, max_depth=3), 4, policy_ending_at({}, 3), prm, equivalence)
    assert sol.trace is not None
    nodes = sol.trace.nodes.values()
    assert all(node.depth == sol.trace.widths.depth(node.key) for node in nodes)
    expanded = [node.depth for node in nodes if node.expanded]
    assert sol.trace.iteration_widths() == tuple(
        expanded.count(d) for d in range(max(expanded) + 1)
    )


ANSWERS = ("7", "10", "\\frac{1}{2}")


def policy_with_answers(steps: int) -> FakePolicy:
    """Paths end after `steps` steps at most (a quarter of the steps end one early), boxing
    one of ANSWERS drawn by the child's RNG."""

    def step(path: Path, rng: random.Random) -> tuple[str, Finish]:
        if len(path.steps) + 1 >= steps or rng.random() < 0.25:
            return f"so $\\boxed{{{rng.choice(ANSWERS)}}}$", Finish.EOS
        return f"step {len(path.steps)}\n\n", Finish.STEP

    return FakePolicy(step)


def varied_prm() -> FakePRM:
    return FakePRM(lambda path, i: ((sum(path.key) * 7 + i) % 10) / 10)


async def test_trace_knows_what_was_solved_and_every_finished_answer(
    equivalence: Equivalence, tmp_path: FilePath
) -> None:
    sol = await search(
        DVTS(width=4, max_depth=4), 8, policy_with_answers(3), varied_prm(), equivalence, "Q?"
    )
    trace = sol.trace
    assert trace is not None
    assert (trace.problem, trace.strategy, trace.n, trace.answer) == ("Q?", "dvts", 8, sol.answer)
    answers = trace.answers()
    # every finished node has its answer, the results exactly the candidates' answers
    finished = {n.key for n in trace.nodes.values() if n.finish is not Finish.STEP}
    assert set(answers) == finished
    for candidate in sol.candidates:
        assert answers[tuple(map(int, candidate.branch.split(".")))] == candidate.answer
    assert set(answers.values()) <= set(ANSWERS)
    first = sol.candidates[0]
    assert trace.text_of(tuple(map(int, first.branch.split(".")))) == first.text

    saved = tmp_path / "trace.json"
    trace.save_json(saved)
    data = json.loads(saved.read_text())
    assert (data["problem"], data["strategy"], data["n"], data["answer"]) == (
        "Q?",
        "dvts",
        8,
        sol.answer,
    )
    by_id = {n["id"]: n for n in data["nodes"]}
    assert by_id[first.branch]["answer"] == first.answer
    assert by_id["root"]["answer"] is None


def drawn(figure: Figure) -> RendererAgg:
    """Lay the figure out and draw it, as saving it would; return the renderer."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return canvas.get_renderer()


async def test_picture_title_names_the_problem_strategy_n_and_answer(
    equivalence: Equivalence,
) -> None:
    problem = "Let $f(x) = 3x^2 - 5$. " + "What is $f(f(1))$? " * 20
    sol = await search(
        BeamSearch(width=2, max_depth=4),
        4,
        policy_with_answers(3),
        varied_prm(),
        equivalence,
        problem,
    )
    assert sol.trace is not None and sol.answer is not None
    figure = figure_of(sol.trace)
    title = figure.axes[0].get_title(loc="left").split("\n")
    # the problem, shortened to two lines, with "$" shown as text; then what and the answer
    assert len(title) == 3
    assert title[0].startswith(r"Let \$f(x) = 3x^2 - 5\$. What is \$f(f(1))\$?")
    assert title[1].endswith("…") and len(title[0]) + len(title[1]) < len(problem)
    assert title[2] == f"beam_search, n=4, answer: {sol.answer}".replace("$", r"\$")
    assert title_of(sol.trace).split("\n")[-1] == f"beam_search, n=4, answer: {sol.answer}"
    assert figure_of(sol.trace, title="mine").axes[0].get_title(loc="left") == "mine"


async def test_every_finished_leaf_is_labelled_with_its_answer(
    equivalence: Equivalence,
) -> None:
    sol = await search(
        DVTS(width=4, max_depth=4), 8, policy_with_answers(3), varied_prm(), equivalence
    )
    trace = sol.trace
    assert trace is not None
    ax = figure_of(trace).axes[0]
    answers = trace.answers()
    labels = {t.get_gid(): t for t in ax.texts}  # each label carries its node's id
    assert set(labels) == {format_key(key) for key in answers}  # every finished node, no other
    assert len(answers) > len(sol.candidates)  # finished paths the search did not keep too
    for key, answer in answers.items():
        label = labels[format_key(key)]
        assert label.get_text() == answer.replace("$", r"\$")  # short answers: as they are
        assert (label.get_color() == CHOSEN_COLOR) is (answer == sol.answer)
    assert {t.get_text() for t in ax.texts} == set(answers.values())


def test_leaf_labels_say_why_a_finished_path_has_no_answer() -> None:
    ended = Node(key=(0,), parent=(), depth=1, finish=Finish.EOS)
    cut = Node(key=(1,), parent=(), depth=1, finish=Finish.LENGTH)
    assert leaf_label(ended, None) == "(no answer)"
    assert leaf_label(cut, None) == "(cut)"
    assert leaf_label(ended, "x" * 30) == "x" * 17 + "…"


async def test_legend_and_colour_bar_stay_off_the_tree_and_labels_apart_at_n64(
    equivalence: Equivalence,
) -> None:
    for strategy in (BeamSearch(width=4, max_depth=5), DVTS(width=4, max_depth=5)):
        sol = await search(strategy, 64, policy_with_answers(4), varied_prm(), equivalence)
        assert sol.trace is not None
        figure = figure_of(sol.trace)
        renderer = drawn(figure)
        tree, colour_bar = figure.axes
        tree_box = tree.get_window_extent(renderer)
        assert len(figure.legends) == 1 and not tree.get_legend()
        legend_box = figure.legends[0].get_window_extent(renderer)
        assert not legend_box.overlaps(tree_box)
        assert legend_box.y1 <= tree_box.y0  # below the tree
        assert not colour_bar.get_window_extent(renderer).overlaps(tree_box)
        # every finished leaf labelled, inside the tree's axes, and no two labels touch
        boxes = [t.get_window_extent(renderer) for t in tree.texts]
        assert len(boxes) == len(sol.trace.answers()) >= 64
        assert all(tree_box.contains(b.x0, b.y0) and tree_box.contains(b.x1, b.y1) for b in boxes)
        ordered = sorted(boxes, key=lambda b: b.x0)
        assert all(a.x1 < b.x0 for a, b in itertools.pairwise(ordered))
