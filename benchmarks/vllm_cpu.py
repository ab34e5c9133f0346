"""Real vLLM on the CPU: asynctts against a bare aiohttp client and against vLLM's own
benchmark client (`vllm bench serve`) at equal concurrency, and the prefix-cache hit rate of
beam search read from vLLM's /metrics.

`servers/launch.py`'s CPU profile starts two vLLM servers (from `.venv-vllm`, on free ports):
SmolLM2-135M-Instruct as the policy, and the same model as a logprob judge (a weak PRM: the
plumbing, not accuracy). Then:

  1. Throughput, at `--concurrency` requests in flight, the same prompts and the same number of
     generated tokens for every client:
     (a) bare:       an aiohttp loop sending the completions bodies asynctts would send (the
                     chat template rendered to token ids, per-branch seeds), C workers;
     (b) solve_many: `solve_many` over the same problems with `MajorityVote(per_request=1)`,
                     `Endpoint(max_in_flight=C)`;
     (c) vllm_bench: `vllm bench serve --max-concurrency C` (run from `.venv-vllm`) sending
                     the same prompts as text, each with `--ignore-eos` and a max_tokens of
                     exactly what that request generated under (a), so that its work equals
                     (a)'s and (b)'s (asynctts cannot ask for ignore_eos: it samples to EOS or
                     `--max-tokens`). It streams (its completions client always does).
     Rounds alternate the order of the clients. Reported: wall-clock (vllm_bench: its own
     measured duration, not its start-up), samples/s, generated tokens/s and the prompt and
     generated token counts from vLLM's `vllm:prompt_tokens_total` and
     `vllm:generation_tokens_total` (the check of equal work), the client's CPU per sample.
     The server is the bottleneck here (a 2-core CPU generates ~50-100 tokens/s), so the
     ratios show whether the orchestrator takes anything from it.
  2. Beam search (n=8, width 4) over `--beam-problems` problems: vLLM's prefix-cache hit rate
     (`vllm:prefix_cache_hits_total` / `vllm:prefix_cache_queries_total`, in tokens) on the
     policy and on the judge, over the search.

    python benchmarks/vllm_cpu.py [--problems 4] [--n 8] [--concurrency 8] [--max-tokens 96]

Needs `.venv-vllm` (`make venv-vllm`); takes ~9 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from asynctts import (
    DEFAULT_SYSTEM_PROMPT,
    BeamSearch,
    Endpoint,
    MajorityVote,
    Sampling,
    Solver,
)
from asynctts.backends.context import derive_seed
from asynctts.backends.policy import encode_completions
from asynctts.backends.templates import PolicyPrompt, load_tokenizer

from harness import add_output_argument, load_launcher, metrics, quiet_logs, write_report

SEED = 0
CLIENTS = ("bare", "solve_many", "vllm_bench")
# vllm bench drops requests with fewer output tokens than this (datasets.is_valid_sequence)
VLLM_BENCH_MIN_TOKENS = 4
# `vllm bench serve` itself: the code its subcommand runs. The `vllm` console script of the
# vllm-cpu distribution dies before parsing arguments (it asks importlib.metadata for the
# version of a distribution named "vllm"), so the subcommand's parser and main are called here.
VLLM_BENCH_SERVE = """
import sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser(prog="vllm bench serve")
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""


def problems(count: int) -> list[tuple[str, str]]:
    return [
        (f"p{i}", f"What is {17 + 7 * i} + {28 + 5 * i}? Then multiply the result by {i + 2}.")
        for i in range(count)
    ]


def counter(values: dict[str, float], name: str) -> float:
    """A counter by its name with or without the `_total` suffix vLLM versions differ on."""
    return values.get(name + "_total", values.get(name, 0.0))


@dataclass
class Workload:
    """What every client of part 1 sends: `bodies[i]` (asynctts's request i) has the prompt
    `texts[i]` (the same tokens, as text); `lengths[i]` is what request i generated, known
    after the first bare run."""

    policy: Endpoint
    sampling: Sampling
    items: list[tuple[str, str]]
    n: int
    concurrency: int
    bodies: list[dict[str, Any]]
    texts: list[str]
    run_dir: Path
    lengths: list[int] | None = None
    dataset: Path | None = None


def bare_bodies(
    policy: Endpoint, sampling: Sampling, items: list[tuple[str, str]], n: int
) -> tuple[list[dict[str, Any]], list[str]]:
    """What `PolicyClient` sends for branch g of each problem (a fork of the root, one sample),
    and each request's prompt as text (vLLM encodes it to the same ids: `PolicyPrompt`)."""
    prompt = PolicyPrompt.for_endpoint(policy)
    bodies, texts = [], []
    for pid, problem in items:
        rendered = prompt.render(problem, DEFAULT_SYSTEM_PROMPT, "")
        ids = prompt.token_ids(problem, DEFAULT_SYSTEM_PROMPT, ())
        text: str | list[int] = ids if ids is not None else rendered
        for g in range(n):
            bodies.append(
                encode_completions(
                    model=policy.model,
                    prompt=text,
                    sampling=sampling,
                    n=1,
                    to_end=True,
                    seed=derive_seed(SEED, pid, (g,)),
                )
            )
            texts.append(rendered)
    return bodies, texts


async def run_bare(work: Workload) -> dict[str, Any]:
    bodies = work.bodies
    lengths = [0] * len(bodies)
    queue = iter(enumerate(bodies))
    url = work.policy.root_url + "/v1/completions"
    connector = aiohttp.TCPConnector(limit=work.concurrency, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=1800)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            for index, body in queue:
                async with session.post(
                    url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}
                ) as reply:
                    raw = await reply.read()
                if reply.status != 200:
                    raise RuntimeError(f"bare client: HTTP {reply.status}: {raw[:300]!r}")
                lengths[index] = int(orjson.loads(raw)["usage"]["completion_tokens"])

        wall, cpu = time.perf_counter(), time.process_time()
        async with asyncio.TaskGroup() as tg:
            for _ in range(work.concurrency):
                tg.create_task(worker())
        return {
            "wall_s": time.perf_counter() - wall,
            "cpu_s": time.process_time() - cpu,
            "output_lengths": lengths,
        }


async def run_solve_many(work: Workload) -> dict[str, Any]:
    async with Solver(policy=work.policy, sampling=work.sampling) as solver:
        wall, cpu = time.perf_counter(), time.process_time()
        async for solution in solver.solve_many(
            work.items,
            strategy=MajorityVote(per_request=1),
            n=work.n,
            seed=SEED,
            max_problems_in_flight=len(work.items),
        ):
            if not solution.ok or solution.lost:
                raise RuntimeError(f"{solution.problem_id}: {solution.error or solution.lost[:1]}")
        return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def write_sharegpt(path: Path, tokenizer_name: str, texts: list[str], lengths: list[int]) -> None:
    """`vllm bench serve --dataset-name sharegpt`'s format, one entry per request in order.

    vllm bench sets a sharegpt request's max_tokens to the token count of its "gpt" turn, so
    that turn is filler of exactly `lengths[i]` tokens. (Its `custom` JSONL format takes the
    lengths as numbers but is read with pandas, which .venv-vllm does not have.)
    """
    tokenizer = load_tokenizer(tokenizer_name)
    specials = len(tokenizer("")["input_ids"])
    entries = []
    for i, (text, length) in enumerate(zip(texts, lengths, strict=True)):
        if length < VLLM_BENCH_MIN_TOKENS:
            raise RuntimeError(
                f"request {i} generated {length} tokens: vllm bench drops requests of fewer "
                f"than {VLLM_BENCH_MIN_TOKENS}, so its workload could not equal asynctts's"
            )
        filler = " x" * (length - specials)  # " x" is one token in byte-level BPE vocabularies
        got = len(tokenizer(filler)["input_ids"])
        if got != length:
            raise RuntimeError(f"filler of {length} tokens encodes to {got} with {tokenizer_name}")
        entries.append(
            {"conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": filler}]}
        )
    path.write_bytes(orjson.dumps(entries))


def vllm_bench_command(work: Workload, python: Path, result_name: str) -> list[str]:
    assert work.dataset is not None
    sampling = work.sampling
    return [
        str(python),
        "-c",
        VLLM_BENCH_SERVE,
        "--backend",
        "vllm",
        "--base-url",
        work.policy.root_url,
        "--endpoint",
        "/v1/completions",
        "--model",
        work.policy.model,
        "--tokenizer",
        work.policy.tokenizer_name,
        "--dataset-name",
        "sharegpt",
        "--dataset-path",
        str(work.dataset),
        "--disable-shuffle",
        "--num-prompts",
        str(len(work.bodies)),
        "--max-concurrency",
        str(work.concurrency),
        "--request-rate",
        "inf",
        "--ignore-eos",
        "--temperature",
        str(sampling.temperature),
        "--top-p",
        str(sampling.top_p),
        # seeded like asynctts's requests (vLLM samples those on per-request generators)
        "--extra-body",
        orjson.dumps({"seed": SEED}).decode(),
        "--seed",
        str(SEED),
        "--disable-tqdm",
        "--save-result",
        "--result-dir",
        str(work.run_dir),
        "--result-filename",
        result_name,
    ]


def run_vllm_bench(work: Workload, python: Path, round_: int) -> dict[str, Any]:
    if work.lengths is None:
        raise RuntimeError("vllm_bench runs after a bare run has measured the output lengths")
    if work.dataset is None:
        work.dataset = work.run_dir / "vllm_bench_sharegpt.json"
        write_sharegpt(work.dataset, work.policy.tokenizer_name, work.texts, work.lengths)
    result_name = f"vllm_bench_{round_}.json"
    log_path = work.run_dir / f"vllm_bench_{round_}.log"
    env = dict(os.environ)
    if Path(work.policy.tokenizer_name).is_dir():
        env["HF_HUB_OFFLINE"] = "1"
    started = time.perf_counter()
    with log_path.open("wb") as log:
        done = subprocess.run(
            vllm_bench_command(work, python, result_name),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=work.run_dir,
        )
    process_wall = time.perf_counter() - started
    lines = log_path.read_text(errors="replace").splitlines()
    tail = "\n".join(lines[-30:])
    if done.returncode != 0:
        raise RuntimeError(f"vllm bench serve exited with {done.returncode}:\n{tail}")
    result = orjson.loads((work.run_dir / result_name).read_bytes())
    if result["completed"] != len(work.bodies) or result["failed"]:
        raise RuntimeError(
            f"vllm bench serve completed {result['completed']} of {len(work.bodies)} requests "
            f"({result['failed']} failed):\n{tail}"
        )
    return {
        "wall_s": result["duration"],
        "cpu_s": None,  # a separate process, most of whose CPU is its start-up
        "process_wall_s": process_wall,
        "bench_request_throughput": result["request_throughput"],
        "bench_output_throughput": result["output_throughput"],
        "bench_output_tokens": result["total_output_tokens"],
        "bench_input_tokens": result["total_input_tokens"],
        "bench_median_ttft_ms": result.get("median_ttft_ms"),
        "bench_median_tpot_ms": result.get("median_tpot_ms"),
        "bench_warnings": sorted({line for line in lines if "WARNING" in line}),
    }


async def run_beam_search(
    policy: Endpoint, prm: Endpoint, sampling: Sampling, items: list[tuple[str, str]], depth: int
) -> dict[str, Any]:
    async with Solver(policy=policy, prm=prm, sampling=sampling) as solver:
        wall = time.perf_counter()
        answers = {}
        async for solution in solver.solve_many(
            items, strategy=BeamSearch(width=4, max_depth=depth), n=8, seed=SEED
        ):
            answers[solution.problem_id] = solution.answer
        return {"wall_s": time.perf_counter() - wall, "answers": answers}


def throughput(name: str, round_: int, work: Workload, vllm_python: Path) -> dict[str, Any]:
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "bare": lambda: asyncio.run(run_bare(work)),
        "solve_many": lambda: asyncio.run(run_solve_many(work)),
        "vllm_bench": lambda: run_vllm_bench(work, vllm_python, round_),
    }
    before = metrics(work.policy.root_url)
    cell = runners[name]()
    after = metrics(work.policy.root_url)
    lengths = cell.pop("output_lengths", None)
    if lengths is not None and work.lengths is None:
        work.lengths = lengths
    samples = len(work.bodies)
    tokens = counter(after, "vllm:generation_tokens") - counter(before, "vllm:generation_tokens")
    prompt_tokens = counter(after, "vllm:prompt_tokens") - counter(before, "vllm:prompt_tokens")
    row = {
        "part": "throughput",
        "client": name,
        "round": round_,
        "concurrency": work.concurrency,
        "samples": samples,
        "prompt_tokens": prompt_tokens,
        "generated_tokens": tokens,
        "samples_per_s": samples / cell["wall_s"],
        "tokens_per_s": tokens / cell["wall_s"],
        "client_cpu_ms_per_sample": (
            None if cell["cpu_s"] is None else cell["cpu_s"] / samples * 1e3
        ),
        **cell,
    }
    if lengths is not None:
        row["same_lengths_as_first_bare_run"] = lengths == work.lengths
    print(f"round {round_} {name:>10}: {cell['wall_s']:.1f} s, {row['tokens_per_s']:.1f} tokens/s")
    return row


def paired_ratios(runs: list[dict[str, Any]], numerator: str, denominator: str) -> list[float]:
    def rate(round_: int, client: str) -> float:
        row = next(r for r in runs if r["round"] == round_ and r["client"] == client)
        return float(row["samples_per_s"])

    rounds = sorted({r["round"] for r in runs})
    return [rate(i, numerator) / rate(i, denominator) for i in rounds]


def vllm_version(python: Path) -> str:
    done = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--n", type=int, default=8, help="samples per problem")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the three clients")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--beam-problems", type=int, default=4)
    parser.add_argument("--beam-depth", type=int, default=5)
    add_output_argument(parser, "vllm_cpu")
    args = parser.parse_args()
    quiet_logs()
    launch = load_launcher()
    vllm_python: Path = launch.VLLM_PYTHON
    specs = launch.cpu_profile(python=vllm_python, say=print, policy_port=0, prm_port=0)
    items = problems(args.problems)
    sampling = Sampling(max_tokens=args.max_tokens)
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory() as run_dir,
        launch.running(specs, run_dir=Path(run_dir), say=print) as servers,
    ):
        config = launch.endpoints_config(servers)
        policy = Endpoint(**config["policy"], max_in_flight=args.concurrency)
        prm = Endpoint(**config["prm"], max_in_flight=args.concurrency)
        bodies, texts = bare_bodies(policy, sampling, items, args.n)
        work = Workload(
            policy, sampling, items, args.n, args.concurrency, bodies, texts, Path(run_dir)
        )
        for round_ in range(args.repeats):
            # alternate the order: a shared machine drifts within a round. Round 0 starts with
            # bare, which measures the output lengths vllm_bench is given.
            for name in CLIENTS if round_ % 2 == 0 else CLIENTS[::-1]:
                rows.append(throughput(name, round_, work, vllm_python))

        roles = {"policy": servers[0], "prm": servers[1]}
        cache_before = {role: metrics(server.root_url) for role, server in roles.items()}
        beam = asyncio.run(
            run_beam_search(policy, prm, sampling, items[: args.beam_problems], args.beam_depth)
        )
        for role, server in roles.items():
            now = metrics(server.root_url)
            queries = counter(now, "vllm:prefix_cache_queries") - counter(
                cache_before[role], "vllm:prefix_cache_queries"
            )
            hits = counter(now, "vllm:prefix_cache_hits") - counter(
                cache_before[role], "vllm:prefix_cache_hits"
            )
            rows.append(
                {
                    "part": "beam_search_prefix_cache",
                    "server": role,
                    "problems": args.beam_problems,
                    "wall_s": beam["wall_s"],
                    "prefix_cache_queries": queries,
                    "prefix_cache_hits": hits,
                    "hit_rate": hits / queries if queries else None,
                }
            )
        bench_command = vllm_bench_command(work, vllm_python, "RESULT.json")

    runs = [row for row in rows if row["part"] == "throughput"]
    print()
    print(
        f"SmolLM2-135M-Instruct on vLLM (CPU): {len(bodies)} samples of <= "
        f"{args.max_tokens} tokens, {args.concurrency} in flight, {args.repeats} rounds"
    )
    print(
        f"{'round':>5} | {'client':>10} | {'wall s':>6} | {'samples/s':>9} | {'prompt':>6} | "
        f"{'tokens':>6} | {'tokens/s':>8} | client CPU ms/sample"
    )
    for row in runs:
        cpu = row["client_cpu_ms_per_sample"]
        print(
            f"{row['round']:>5} | {row['client']:>10} | {row['wall_s']:>6.1f} | "
            f"{row['samples_per_s']:>9.2f} | {row['prompt_tokens']:>6.0f} | "
            f"{row['generated_tokens']:>6.0f} | {row['tokens_per_s']:>8.1f} | "
            + ("-" if cpu is None else f"{cpu:.2f}")
        )
    summary: dict[str, Any] = {
        "part": "throughput_ratio",
        "equal_work": len({(r["prompt_tokens"], r["generated_tokens"]) for r in runs}) == 1,
        # as the `vllm` console script would take it (the run passes it to VLLM_BENCH_SERVE)
        "vllm_bench_command": ["vllm", "bench", "serve", *bench_command[3:]],
    }
    for numerator, denominator in (("solve_many", "bare"), ("solve_many", "vllm_bench")):
        ratios = paired_ratios(runs, numerator, denominator)
        key = f"{numerator}/{denominator}"
        summary[key] = {"paired_ratios": ratios, "median_ratio": statistics.median(ratios)}
        print(
            f"{key}, samples/s, per round: {', '.join(f'{r:.2f}' for r in ratios)}"
            f" (median {statistics.median(ratios):.2f})"
        )
    rows.append(summary)
    print(
        f"equal work (same prompt and generated token counts in every run): {summary['equal_work']}"
    )
    print()
    print(
        f"beam search, n=8, width 4, depth <= {args.beam_depth}, {args.beam_problems} "
        "problems: prefix cache"
    )
    for row in (r for r in rows if r["part"] == "beam_search_prefix_cache"):
        rate = "n/a" if row["hit_rate"] is None else f"{row['hit_rate']:.1%}"
        print(
            f"{row['server']:>7}: {row['prefix_cache_hits']:.0f} of "
            f"{row['prefix_cache_queries']:.0f} prompt tokens hit ({rate})"
        )
    write_report(
        args.output,
        "vllm_cpu",
        {
            "problems": args.problems,
            "n": args.n,
            "concurrency": args.concurrency,
            "repeats": args.repeats,
            "max_tokens": args.max_tokens,
            "beam_problems": args.beam_problems,
            "beam_depth": args.beam_depth,
            "output_lengths": work.lengths,
        },
        {"aiohttp": aiohttp.__version__, "vllm-cpu": vllm_version(vllm_python)},
        rows,
    )


if __name__ == "__main__":
    main()
