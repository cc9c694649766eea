"""Benchmark of the bulk assignment solver: optimal versus greedy, and versus an exact MILP.

Plain script, no pytest: ``.venv/bin/python bench/assignment_bench.py``. Instances use
random unit vectors (dim 384) and eligibility "same job role". It prints the median of
``--runs`` wall-clock runs for each solver, the number placed, and the ratio of total
similarity optimal/greedy; on a smaller instance it also checks the optimum against the
independent integer program and the forced sparse fallback.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.assignment_solver import (  # noqa: E402
    AssignmentProblem,
    AssignmentResult,
    exact_assignment_milp,
    greedy_assignment,
    solve_assignment,
)

DIM = 384


def role_problem(
    seed: int, n_agents: int, n_teams: int, n_roles: int, seats: Callable[[np.random.Generator, int], list[int]]
) -> AssignmentProblem:
    """Random unit vectors; each agent may join exactly the teams of its own role."""
    rng = np.random.default_rng(seed)
    agents = _unit_vectors(rng, n_agents)
    teams = _unit_vectors(rng, n_teams)
    team_roles = np.arange(n_teams) % n_roles
    teams_of_role = [np.flatnonzero(team_roles == role).tolist() for role in range(n_roles)]
    agent_roles = rng.integers(0, n_roles, size=n_agents)
    return AssignmentProblem(agents, teams, seats(rng, n_teams), [teams_of_role[r] for r in agent_roles])


def _unit_vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    vectors = rng.standard_normal((count, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def timed(solver: Callable[[AssignmentProblem], AssignmentResult], problem: AssignmentProblem, runs: int):
    """(median seconds, last result) over ``runs`` calls."""
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        result = solver(problem)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def report(name: str, seconds: float, result: AssignmentResult) -> None:
    print(
        f"  {name:<14} median {seconds:7.3f} s  placed {result.placed_count:>6}  "
        f"total similarity {result.total_similarity:12.6f}  method {result.method}"
    )


def bench_target(runs: int) -> None:
    print("10,000 agents x 1,000 teams (10 seats each), 10 roles, eligible = same role")
    problem = role_problem(0, 10_000, 1_000, 10, lambda rng, n: [10] * n)
    optimal_s, optimal = timed(solve_assignment, problem, runs)
    greedy_s, greedy = timed(greedy_assignment, problem, runs)
    report("optimal", optimal_s, optimal)
    report("greedy", greedy_s, greedy)
    print(f"  similarity ratio optimal/greedy: {optimal.total_similarity / greedy.total_similarity:.4f}")


def bench_against_exact(runs: int) -> None:
    print("1,000 agents x 100 teams (0-14 seats), 4 roles; checked against the MILP")
    problem = role_problem(1, 1_000, 100, 4, lambda rng, n: rng.integers(0, 15, size=n).tolist())
    solvers = {
        "optimal": solve_assignment,
        "sparse forced": lambda p: solve_assignment(p, matcher="sparse"),
        "exact milp": exact_assignment_milp,
        "greedy": greedy_assignment,
    }
    results = {}
    for name, solver in solvers.items():
        seconds, results[name] = timed(solver, problem, runs)
        report(name, seconds, results[name])
    gap = results["optimal"].total_similarity - results["exact milp"].total_similarity
    same_count = results["optimal"].placed_count == results["exact milp"].placed_count
    print(f"  optimal - milp similarity: {gap:.2e}  same count placed: {same_count}")


def bench_sparse_fallback(runs: int) -> None:
    print("6,000 agents x 600 teams (10 seats), 12 roles, eligible = own or next role: one component")
    problem = role_problem(2, 6_000, 600, 12, lambda rng, n: [10] * n)
    n_roles, team_roles = 12, np.arange(600) % 12
    next_role = [np.flatnonzero(team_roles == (team_roles[own[0]] + 1) % n_roles).tolist() for own in problem.eligible]
    problem = replace(problem, eligible=[own + extra for own, extra in zip(problem.eligible, next_role, strict=True)])
    for name, matcher in (("auto", "auto"), ("dense forced", "dense")):
        seconds, result = timed(lambda p, matcher=matcher: solve_assignment(p, matcher=matcher), problem, runs)
        report(name, seconds, result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-fallback", action="store_true", help="skip the 6,000 x 6,000 component")
    args = parser.parse_args()
    bench_target(args.runs)
    bench_against_exact(args.runs)
    if not args.skip_fallback:
        bench_sparse_fallback(args.runs)


if __name__ == "__main__":
    main()
