"""Particle filtering (Puri et al. 2025, "Rollout Roulette", arXiv 2502.01618), as the
authors' code runs it, over the two protocols.

Rules:
- n particles start at the root. Each step every active (unfinished) particle samples one
  step. Particles that are copies of one path (resampling duplicates them) share it: the path
  is expanded once, with one request for as many children as it has copies, so the server
  samples them over one cached prefix; the children have distinct keys, hence distinct seeds.
- Each child's whole prefix is scored by the PRM; its reward r is its value under
  `aggregate` ("last": the score of its last step). Weights over the pool are
  softmax(logit(r) / weight_temperature), r clipped to [REWARD_CLIP, 1 - REWARD_CLIP] so the
  logit is finite; at weight_temperature 1 a particle is drawn in proportion to the PRM's odds
  r / (1 - r).
  A weight is the particle's current reward alone: the PRM values the whole prefix, so
  nothing carries over from earlier steps, whether or not they resampled.
- Resampling draws the pool's size anew from the pool with replacement, "multinomial"
  (independent draws) or "systematic" (one uniform offset, n evenly spaced points: each
  particle gets floor or ceil of n times its weight). It happens after every step whose
  effective sample size ESS = 1 / sum(w^2) (at most the pool's size m) has ESS / m <=
  `ess_threshold`: 1.0 resamples every step (the paper), 0.0 never (n independent
  step-by-step samples).
- Finished particles (EOS, max_tokens, an empty step) are not expanded again. With
  `resample_inactive` (the paper's default) they stay in the pool with their last reward and
  can be drawn again, or dropped. Without it they leave the pool as results, and the active
  ones are resampled to n minus the finished.
- Stop when every particle of the pool has finished, or after `max_depth` steps, the last of
  which generates to the end (as the tree searches do). No resampling follows the last step:
  it could only drop particles before the answer is picked. The reference's loop resamples
  once more there.
- Entropic annealing (Giannone et al. 2025, arXiv 2510.05825), off by default: when the
  weights collapse, ESS / m < `anneal_below`, in the early phase, t / max_depth <
  `anneal_until`, the resampling temperature of the step after t steps (t = 1, 2, ...) rises
  to weight_temperature * max(1, (m / ESS) * (1 - t / max_depth)), flattening the draw most
  early on. The gate reads the ESS of the untempered weights. This is the ESS schedule of
  the authors' implementation (its_hub's EntropicParticleFiltering, which also defaults to
  systematic resampling, a gate of 0.5 and an early phase of 0.5); `max_depth` plays the part
  of its step cap.
- Results: the finished particles set aside (without `resample_inactive`), then the final
  pool in order, copies included (each copy is a particle and votes), at most n paths; then
  every lost branch. A failed expansion loses all copies of its path, a failed scoring the
  one child: each as one `BranchLost` under the child's key. The rest carry on; resampling
  refills the pool to its size.
- Answer: the particle of largest weight, i.e. of largest reward (selection "best"); the
  weighted vote of `WeightedParticleFilter` sums the rewards of each answer group's
  particles, copies counted (the existing weighted vote over the final pool).

Seeds: the strategy sees only the root and the two protocols, and the root's key is () for
every problem. The draws of a resampling come from a `random.Random` seeded by a hash of the
step index and the keys and texts of the pool's particles. Those texts are what the seeded
requests sampled (seeds derive from the solve's seed, the problem id and the key), so a
seeded solve reproduces its resampling, and two problems share draws only where every
particle's text is the same. PRM scores are left out of the hash: a server may change their
last bits from one batch to the next.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from asynctts.errors import BranchLost
from asynctts.protocols import GenerateSteps, Path, ScoreSteps
from asynctts.search.aggregate import AggregateName, check_aggregate, value_of
from asynctts.search.sampling import scored_children
from asynctts.search.strategy import Selection

Resampling = Literal["multinomial", "systematic"]
RESAMPLINGS: tuple[Resampling, ...] = ("multinomial", "systematic")
# Rewards are clipped this far from 0 and 1 before the logit (the reference's bound).
REWARD_CLIP = 1e-7

Key = tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class ParticleFilter:
    """Args:
    max_depth: steps at most; the last one generates to the end.
    aggregate: how a path's step scores become its reward: "last", "min" or "prod".
    weight_temperature: of the resampling weights softmax(logit(r) / weight_temperature); > 0.
    resampling: "multinomial" or "systematic".
    ess_threshold: resample after a step when ESS / pool size <= this, in [0, 1].
    resample_inactive: finished particles stay in the pool and can be drawn again.
    anneal_below: entropic annealing when ESS / pool size < this, in [0, 1] (0: off).
    anneal_until: entropic annealing only while steps / max_depth < this, in [0, 1].
    """

    name: ClassVar[str] = "particle_filter"
    needs_prm: ClassVar[bool] = True
    selection: ClassVar[Selection] = "best"
    max_depth: int = 40
    aggregate: AggregateName = "last"
    weight_temperature: float = 1.0
    resampling: Resampling = "multinomial"
    ess_threshold: float = 1.0
    resample_inactive: bool = True
    anneal_below: float = 0.0
    anneal_until: float = 0.5

    def __post_init__(self) -> None:
        check_aggregate(self.aggregate)
        if self.max_depth < 1:
            raise ValueError(f"max_depth={self.max_depth}: need >= 1")
        if not self.weight_temperature > 0:  # also refuses NaN
            raise ValueError(f"weight_temperature={self.weight_temperature}: need > 0")
        if self.resampling not in RESAMPLINGS:
            raise ValueError(f"resampling={self.resampling!r}: choose one of {list(RESAMPLINGS)}")
        for knob, value in (
            ("ess_threshold", self.ess_threshold),
            ("anneal_below", self.anneal_below),
            ("anneal_until", self.anneal_until),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{knob}={value}: need a value in [0, 1]")

    def check_budget(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"n={n}: need at least one particle")

    def reward(self, path: Path) -> float:
        value = value_of(path.scores, self.aggregate)
        return 0.0 if value is None else value

    async def run(
        self, root: Path, n: int, generate: GenerateSteps, score: ScoreSteps
    ) -> list[Path | BranchLost]:
        self.check_budget(n)
        pool = [root] * n
        finished: list[Path] = []  # set aside (resample_inactive=False), in finishing order
        lost: list[BranchLost] = []
        for depth in range(self.max_depth):
            pool = await self._step(pool, depth == self.max_depth - 1, generate, score, lost)
            if not self.resample_inactive:
                finished.extend(p for p in pool if p.done)
                pool = [p for p in pool if not p.done]
            if all(p.done for p in pool) or depth == self.max_depth - 1:
                break
            pool = self._resampled(pool, n - len(finished), depth + 1)
        return [*finished, *pool, *lost]

    async def _step(
        self,
        pool: list[Path],
        to_end: bool,
        generate: GenerateSteps,
        score: ScoreSteps,
        lost: list[BranchLost],
    ) -> list[Path]:
        """The pool one step on: each finished particle as it is, each active one replaced by
        a scored child of its path (copies of a path get its children in order); particles
        whose expansion or scoring failed for good go to `lost`."""
        copies: dict[Key, int] = {}
        paths: dict[Key, Path] = {}
        for particle in pool:
            if not particle.done:
                copies[particle.key] = copies.get(particle.key, 0) + 1
                paths.setdefault(particle.key, particle)
        async with asyncio.TaskGroup() as tg:  # every path's children generated and scored
            broods = {
                key: tg.create_task(scored_children(paths[key], k, generate, score, to_end=to_end))
                for key, k in copies.items()
            }
        children = {key: iter(task.result()) for key, task in broods.items()}
        stepped: list[Path] = []
        for particle in pool:
            child = particle if particle.done else next(children[particle.key])
            if isinstance(child, BranchLost):
                lost.append(child)
            else:
                stepped.append(child)
        return stepped

    def _resampled(self, pool: list[Path], size: int, steps: int) -> list[Path]:
        """`size` particles drawn from `pool` after `steps` steps (see the module rules), or
        the pool as it is when the ESS gate holds."""
        weights, share = self.draw_weights([self.reward(p) for p in pool], steps)
        if share > self.ess_threshold:
            return pool
        rng = random.Random(draw_seed(pool, steps))
        draw = systematic if self.resampling == "systematic" else multinomial
        return [pool[i] for i in draw(weights, size, rng)]

    def draw_weights(self, rewards: Sequence[float], steps: int) -> tuple[list[float], float]:
        """The weights a resampling after `steps` steps draws with (annealed when
        `anneal_below` and `anneal_until` say so), and ESS / m of the untempered weights."""
        weights = weights_of(rewards, self.weight_temperature)
        share = effective_size(weights) / len(weights)
        if share < self.anneal_below and steps / self.max_depth < self.anneal_until:
            stretch = (1 - steps / self.max_depth) / share
            weights = weights_of(rewards, self.weight_temperature * max(1.0, stretch))
        return weights, share


@dataclass(frozen=True, kw_only=True)
class WeightedParticleFilter(ParticleFilter):
    """The particle filter answering by weighted vote over its final particles."""

    name: ClassVar[str] = "weighted_particle_filter"
    selection: ClassVar[Selection] = "weighted"


def weights_of(rewards: Sequence[float], temperature: float) -> list[float]:
    """softmax(logit(r) / temperature) of each reward, r clipped to [REWARD_CLIP,
    1 - REWARD_CLIP]; shifted by the largest logit so no term overflows."""
    logits = []
    for r in rewards:
        clipped = min(max(r, REWARD_CLIP), 1 - REWARD_CLIP)
        logits.append(math.log(clipped / (1 - clipped)) / temperature)
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def effective_size(weights: Sequence[float]) -> float:
    """Kish's effective sample size 1 / sum(w^2) of normalised weights, at most their count
    (rounding can push equal weights a hair above it)."""
    return min(float(len(weights)), 1 / sum(w * w for w in weights))


def multinomial(weights: Sequence[float], size: int, rng: random.Random) -> list[int]:
    """`size` indexes drawn independently in proportion to `weights`, in increasing order."""
    return sorted(rng.choices(range(len(weights)), weights=weights, k=size))


def systematic(weights: Sequence[float], size: int, rng: random.Random) -> list[int]:
    """`size` indexes at the evenly spaced points (u + i) / size of the weights' cumulative
    sum, u uniform in [0, 1): index j comes floor or ceil of size * w_j times."""
    bounds = list(itertools.accumulate(weights))
    total = bounds[-1]
    u = rng.random()
    last = len(weights) - 1
    return [min(bisect.bisect_right(bounds, (u + i) / size * total), last) for i in range(size)]


def draw_seed(pool: Sequence[Path], steps: int) -> int:
    """The seed of a resampling: a hash of the step count and the pool's keys and texts."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(repr(steps).encode())
    for particle in pool:
        digest.update(repr((particle.key, particle.text)).encode())
    return int.from_bytes(digest.digest(), "big")
