"""The two protocols over a `SimModel` in this process: what `SimulatedServer` would answer,
without HTTP, for fast statistical runs of whole strategies (tests, calibration).

Rules:
- The prompt is the problem text, the step delimiter, each earlier turn (`Path.turns`) and
  the delimiter, then the path's steps (as the simulated server joins chat messages); child i
  of a path samples with a seed hashed from (seed, the child's key), so a child's text
  depends only on its place in the tree.
- A one-step child ends at the delimiter (kept, Finish.STEP) or at EOS; `to_end` splits the
  rest of the solution into steps at the delimiter (Finish.EOS). `greedy` children all take
  seed 0, the continuation the simulated server returns at temperature 0.
- The PRM input is the problem, the delimiter, then every step followed by the step tag (never
  the earlier turns).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from asynctts.protocols import STEP_DELIMITER, Finish, Path
from asynctts.testing.sim_model import SimModel


def child_seed(seed: int, key: tuple[int, ...]) -> int:
    digest = hashlib.blake2b(repr((seed, key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass(frozen=True)
class SimPolicy:
    """`GenerateSteps` for one problem of `sim`."""

    sim: SimModel
    problem: str
    seed: int = 0

    async def __call__(
        self, path: Path, k: int, *, to_end: bool = False, greedy: bool = False
    ) -> list[Path]:
        turns = "".join(turn + STEP_DELIMITER for turn in path.turns)
        reading = self.sim.read(self.problem + STEP_DELIMITER + turns + path.text)
        children = []
        for i in range(k):
            seed = 0 if greedy else child_seed(self.seed, (*path.key, i))
            if to_end:
                pieces = self.sim.sample(reading, seed).text.split(STEP_DELIMITER)
                steps = [p + STEP_DELIMITER for p in pieces[:-1]] + [pieces[-1]]
                children.append(path.extend(i, steps, Finish.EOS))
            else:
                s = self.sim.sample(reading, seed, stop=[STEP_DELIMITER])
                if s.stop_reason is None:
                    children.append(path.extend(i, [s.text], Finish.EOS))
                else:
                    children.append(path.extend(i, [s.text + STEP_DELIMITER], Finish.STEP))
        return children


@dataclass(frozen=True)
class SimPRM:
    """`ScoreSteps` for one problem of `sim`."""

    sim: SimModel
    problem: str

    async def __call__(self, paths: Sequence[Path]) -> list[Path]:
        tag = self.sim.step_tag
        out = []
        for path in paths:
            text = self.problem + STEP_DELIMITER + "".join(s + tag for s in path.steps)
            out.append(path.with_scores([p for _, p in self.sim.score(text)]))
        return out


__all__ = ["SimPRM", "SimPolicy", "child_seed"]
