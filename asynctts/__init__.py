"""asynctts: test-time compute scaling for math over OpenAI-compatible endpoints.

from asynctts import Endpoint, solve
policy = Endpoint(base_url="http://127.0.0.1:8000/v1", model="meta-llama/Llama-3.2-1B-Instruct")
prm = Endpoint(base_url="http://127.0.0.1:8001/v1", model="Qwen/Qwen2.5-Math-PRM-7B")
sol = await solve("What is 1+1?", strategy="weighted_best_of_n", n=16,
                  policy=policy, prm=prm, seed=0)
"""

from asynctts.api import STRATEGIES, Solver, solve, solve_many
from asynctts.backends.context import DEFAULT_SYSTEM_PROMPT, Sampling
from asynctts.calibration import CalibrationTable
from asynctts.endpoint import Endpoint
from asynctts.errors import (
    AsyncttsError,
    BadResponse,
    BranchLost,
    ConfigError,
    ConnectFailed,
    ContextLengthExceeded,
    EndpointError,
    EndpointUnreachable,
    HostNotFound,
    ModelNotFound,
    PromptTooLong,
    RateLimited,
    RequestRejected,
    ServerError,
    SolveFailed,
    TimedOut,
    TLSFailed,
    TransportError,
)
from asynctts.gc_tuning import throughput_gc
from asynctts.ledger import Attempt, Ledger, Usage
from asynctts.logs import configure_logging
from asynctts.progress import Progress
from asynctts.protocols import Finish, GenerateSteps, Path, ScoreSteps
from asynctts.search.beam_search import BeamSearch
from asynctts.search.best_of_n import BestOfN
from asynctts.search.compute_optimal import ComputeOptimal
from asynctts.search.dvts import DVTS
from asynctts.search.majority_vote import MajorityVote
from asynctts.search.particle_filter import ParticleFilter, WeightedParticleFilter
from asynctts.search.rebase import Rebase
from asynctts.search.revise import Revise
from asynctts.search.weighted_best_of_n import WeightedBestOfN
from asynctts.solution import Candidate, LostBranch, Solution, Votes

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "DVTS",
    "STRATEGIES",
    "AsyncttsError",
    "Attempt",
    "BadResponse",
    "BeamSearch",
    "BestOfN",
    "BranchLost",
    "CalibrationTable",
    "Candidate",
    "ComputeOptimal",
    "ConfigError",
    "ConnectFailed",
    "ContextLengthExceeded",
    "Endpoint",
    "EndpointError",
    "EndpointUnreachable",
    "Finish",
    "GenerateSteps",
    "HostNotFound",
    "Ledger",
    "LostBranch",
    "MajorityVote",
    "ModelNotFound",
    "ParticleFilter",
    "Path",
    "Progress",
    "PromptTooLong",
    "RateLimited",
    "Rebase",
    "RequestRejected",
    "Revise",
    "Sampling",
    "ScoreSteps",
    "ServerError",
    "Solution",
    "SolveFailed",
    "Solver",
    "TLSFailed",
    "TimedOut",
    "TransportError",
    "Usage",
    "Votes",
    "WeightedBestOfN",
    "WeightedParticleFilter",
    "configure_logging",
    "solve",
    "solve_many",
    "throughput_gc",
]
