"""The bulk assignment solver against exhaustive search, an integer program and greedy.

Pure functions, no database: instances are built from seeded numpy vectors, and random
structure (agents, teams, seats, eligibility) comes from Hypothesis.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models import assignment_solver
from models.assignment_solver import (
    ELIGIBLE_TEAMS_FULL,
    NO_ELIGIBLE_TEAM,
    AssignmentProblem,
    AssignmentResult,
    exact_assignment_bruteforce,
    exact_assignment_milp,
    greedy_assignment,
    solve_assignment,
)
from models.errors import InvalidInput

DIM = 8


def unit_vectors(rng: np.random.Generator, count: int, dim: int = DIM) -> np.ndarray:
    vectors = rng.standard_normal((count, dim))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def vectors_with_similarities(sims: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Agent vectors and identity team vectors so that dot(agent a, team t) == sims[a][t]."""
    agents = np.array(sims, dtype=np.float64)
    return agents, np.eye(agents.shape[1])


@st.composite
def small_problems(draw: st.DrawFn, max_agents: int = 6, max_teams: int = 3) -> AssignmentProblem:
    n_agents = draw(st.integers(0, max_agents))
    n_teams = draw(st.integers(1, max_teams))
    seats = draw(st.lists(st.integers(0, 3), min_size=n_teams, max_size=n_teams))
    team_subsets = st.lists(st.integers(0, n_teams - 1), max_size=n_teams, unique=True)
    eligible = draw(st.lists(team_subsets, min_size=n_agents, max_size=n_agents))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return AssignmentProblem(unit_vectors(rng, n_agents), unit_vectors(rng, n_teams), seats, eligible)


def assert_feasible(problem: AssignmentProblem, result: AssignmentResult) -> None:
    taken = np.bincount(list(result.placements.values()), minlength=len(problem.free_seats))
    assert np.all(taken <= np.asarray(problem.free_seats, dtype=int))
    for agent, team in result.placements.items():
        assert team in problem.eligible[agent]
    assert set(result.placements).isdisjoint(result.unplaced)
    assert set(result.placements) | set(result.unplaced) == set(range(len(problem.eligible)))
    agents, teams = problem.agent_vectors.astype(np.float64), problem.team_vectors.astype(np.float64)
    expected = sum(float(agents[a] @ teams[t]) for a, t in result.placements.items())
    assert result.total_similarity == pytest.approx(expected, abs=1e-9)


def assert_same_optimum(result: AssignmentResult, reference: AssignmentResult, tolerance: float) -> None:
    assert result.placed_count == reference.placed_count
    assert result.total_similarity == pytest.approx(reference.total_similarity, abs=tolerance)


@settings(max_examples=300, deadline=None)
@given(small_problems())
def test_matches_exhaustive_search(problem: AssignmentProblem) -> None:
    reference = exact_assignment_bruteforce(problem)
    for matcher in ("auto", "dense", "sparse"):
        result = solve_assignment(problem, matcher=matcher)
        assert_feasible(problem, result)
        assert_same_optimum(result, reference, 1e-9)


@settings(max_examples=150, deadline=None)
@given(small_problems())
def test_never_worse_than_greedy(problem: AssignmentProblem) -> None:
    optimal, greedy = solve_assignment(problem), greedy_assignment(problem)
    assert_feasible(problem, greedy)
    assert optimal.placed_count >= greedy.placed_count
    if optimal.placed_count == greedy.placed_count:
        assert optimal.total_similarity >= greedy.total_similarity - 1e-9


@settings(max_examples=40, deadline=None)
@given(small_problems(max_agents=40, max_teams=8))
def test_matches_the_integer_program_on_larger_instances(problem: AssignmentProblem) -> None:
    reference = exact_assignment_milp(problem)
    assert_feasible(problem, reference)
    for matcher in ("dense", "sparse"):
        result = solve_assignment(problem, matcher=matcher)
        assert_feasible(problem, result)
        assert_same_optimum(result, reference, 1e-6)


def test_placing_more_agents_beats_higher_similarity() -> None:
    # Agent 0 would rather take team 0 (0.9), but then agent 1 has nowhere to go.
    agents, teams = vectors_with_similarities([[0.9, -0.5], [0.1, 0.0]])
    problem = AssignmentProblem(agents, teams, [1, 1], [[0, 1], [0]])
    result = solve_assignment(problem)
    assert result.placements == {0: 1, 1: 0}
    assert result.total_similarity == pytest.approx(-0.4)
    assert greedy_assignment(problem).placements == {0: 0}


def test_beats_greedy_on_total_similarity() -> None:
    # Greedy grabs 0.9 for agent 0 and leaves agent 1 with 0.1; swapping gives 0.8 + 0.8.
    agents, teams = vectors_with_similarities([[0.9, 0.8], [0.8, 0.1]])
    problem = AssignmentProblem(agents, teams, [1, 1], [[0, 1], [0, 1]])
    result, greedy = solve_assignment(problem), greedy_assignment(problem)
    assert result.placements == {0: 1, 1: 0}
    assert result.total_similarity == pytest.approx(1.6)
    assert greedy.total_similarity == pytest.approx(1.0)


@pytest.mark.parametrize("matcher", ["dense", "sparse"])
def test_spare_seats_are_not_filled_by_ineligible_agents(matcher: str) -> None:
    # Square 3 x 3 seat matrix but only two agents can be placed: the solver's third cell is
    # an ineligible filler and must be dropped, leaving agent 1 or 2 unplaced.
    agents, teams = vectors_with_similarities([[0.2, 0.1, 0.3], [0.9, 0.9, 0.5], [0.9, 0.9, 0.4]])
    problem = AssignmentProblem(agents, teams, [1, 1, 1], [[0, 1, 2], [2], [2]])
    result = solve_assignment(problem, matcher=matcher)
    assert result.placements == {0: 0, 1: 2}
    assert result.unplaced == {2: ELIGIBLE_TEAMS_FULL}


def test_unplaced_reasons() -> None:
    agents, teams = vectors_with_similarities([[0.5, 0.1], [0.4, 0.2], [0.3, 0.3], [0.9, 0.9]])
    problem = AssignmentProblem(agents, teams, [1, 0], [[0], [0], [1], []])
    result = solve_assignment(problem)
    assert result.placements == {0: 0}
    assert result.unplaced == {1: ELIGIBLE_TEAMS_FULL, 2: ELIGIBLE_TEAMS_FULL, 3: NO_ELIGIBLE_TEAM}


def test_team_with_no_free_seats_takes_nobody_and_links_nothing() -> None:
    agents, teams = vectors_with_similarities([[0.9, 0.2, 0.1], [0.1, 0.9, 0.2]])
    problem = AssignmentProblem(agents, teams, [0, 1, 1], [[0, 1], [0, 2]])
    result = solve_assignment(problem)
    assert result.placements == {0: 1, 1: 2}
    assert result.method == "dense-lsa"  # two one-agent components, both solved densely


def test_two_components_are_solved_independently() -> None:
    rng = np.random.default_rng(7)
    agents, teams = unit_vectors(rng, 8), unit_vectors(rng, 4)
    eligible = [[0, 1]] * 4 + [[2, 3]] * 4
    problem = AssignmentProblem(agents, teams, [2, 1, 1, 2], eligible)
    result = solve_assignment(problem)
    assert_feasible(problem, result)
    assert_same_optimum(result, exact_assignment_bruteforce(problem), 1e-9)
    assert result.placed_count == 6
    assert all((agent < 4) == (team < 2) for agent, team in result.placements.items())


def test_auto_goes_sparse_only_for_big_components_with_sparse_eligibility(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(assignment_solver, "DENSE_CELL_LIMIT", 10)
    rng = np.random.default_rng(3)
    chain = [[i % 3, (i + 1) % 3] for i in range(6)]  # 6 x 6 cells, 24 eligible agent-seat edges
    everyone = [[3, 4]] * 4  # 4 x 4 cells, all eligible: sparse would store more
    problem = AssignmentProblem(unit_vectors(rng, 10), unit_vectors(rng, 5), [2] * 5, chain + everyone)
    result = solve_assignment(problem)
    assert result.method == "dense-lsa+sparse-lsa"
    assert_same_optimum(result, exact_assignment_bruteforce(problem), 1e-9)


def test_unknown_matcher_is_rejected() -> None:
    problem = AssignmentProblem(np.ones((1, DIM)), np.ones((1, DIM)), [1], [[0]])
    with pytest.raises(InvalidInput):
        solve_assignment(problem, matcher="hungarian")


@pytest.mark.parametrize(("n_agents", "n_teams"), [(0, 0), (0, 3), (3, 0)])
def test_empty_inputs(n_agents: int, n_teams: int) -> None:
    problem = AssignmentProblem(np.empty((n_agents, DIM)), np.empty((n_teams, DIM)), [1] * n_teams, [[]] * n_agents)
    for solver in (solve_assignment, greedy_assignment, exact_assignment_bruteforce, exact_assignment_milp):
        result = solver(problem)
        assert result.placements == {}
        assert result.unplaced == dict.fromkeys(range(n_agents), NO_ELIGIBLE_TEAM)
        assert result.total_similarity == 0.0


def test_everyone_placed_even_with_negative_similarity() -> None:
    rng = np.random.default_rng(11)
    agents, teams = vectors_with_similarities(rng.uniform(-1.0, -0.1, size=(30, 5)).tolist())
    problem = AssignmentProblem(agents, teams, [6] * 5, [list(range(5))] * 30)
    result = solve_assignment(problem)
    assert result.placed_count == 30
    assert result.total_similarity < 0
    assert_same_optimum(result, exact_assignment_milp(problem), 1e-6)


def test_float32_vectors_and_duplicate_eligibility() -> None:
    rng = np.random.default_rng(5)
    agents, teams = unit_vectors(rng, 5).astype(np.float32), unit_vectors(rng, 2).astype(np.float32)
    problem = AssignmentProblem(agents, teams, [2, 2], [[0, 0, 1], [1, 1], [0], [0, 1, 0], [1]])
    result = solve_assignment(problem)
    assert_feasible(problem, result)
    assert_same_optimum(result, exact_assignment_bruteforce(problem), 1e-9)


@pytest.mark.parametrize(
    ("seats", "eligible", "team_rows"),
    [
        ([1], [[1]], 1),  # team index out of range
        ([-1], [[0]], 1),  # negative seats
        ([1, 1], [[0]], 1),  # one seat count per team
        ([1], [[0], [0]], 1),  # one eligibility list per agent
    ],
)
def test_rejects_malformed_problems(seats: list[int], eligible: list[list[int]], team_rows: int) -> None:
    problem = AssignmentProblem(np.ones((1, DIM)), np.ones((team_rows, DIM)), seats, eligible)
    with pytest.raises(InvalidInput):
        solve_assignment(problem)


def test_rejects_mismatched_dimensions() -> None:
    problem = AssignmentProblem(np.ones((1, DIM)), np.ones((1, DIM + 1)), [1], [[0]])
    with pytest.raises(InvalidInput):
        solve_assignment(problem)


@pytest.mark.parametrize("matcher", ["dense", "sparse"])
@pytest.mark.parametrize("scale", [1e160, 1e7], ids=["overflows", "beyond the limit"])
def test_rejects_finite_vectors_whose_similarities_overflow_or_drown_the_bonus(matcher: str, scale: float) -> None:
    """Vectors were checked finite, not their dot products: the dense matcher died of SciPy's
    ValueError and the sparse one gave a total of inf (helper-71)."""
    vectors = np.array([[scale, 0.0], [0.0, 1.0]])
    with pytest.raises(InvalidInput, match="too long"):
        solve_assignment(AssignmentProblem(vectors, vectors, [1, 1], [[0], [0, 1]]), matcher=matcher)


def test_a_component_too_large_for_an_exact_solve_is_planned_greedily_and_says_so(monkeypatch) -> None:
    """One job role of 10,000 agents made one component of 10,000 x 10,000 seat cells: 19.6 s and
    gigabytes in the dense matcher (helper-71). Past EXACT_CELL_LIMIT it is planned greedily."""
    import models.assignment_solver as solver

    rng = np.random.default_rng(7)
    problem = AssignmentProblem(rng.standard_normal((40, DIM)), rng.standard_normal((6, DIM)), [3] * 6, [list(range(6))] * 40)
    assert solve_assignment(problem).method == "dense-lsa"
    monkeypatch.setattr(solver, "EXACT_CELL_LIMIT", 40 * 18 - 1)
    planned, greedy = solve_assignment(problem), greedy_assignment(problem)
    assert planned.method == solver.GREEDY_METHOD and planned.placements == greedy.placements
    assert solve_assignment(problem, matcher="dense").method == "dense-lsa"  # a forced matcher stays exact


@pytest.mark.parametrize("matcher", ["dense", "sparse"])
@pytest.mark.parametrize("swap", [False, True])
def test_a_problem_just_under_the_similarity_limit_is_still_solved_optimally(matcher: str, swap: bool) -> None:
    """At a limit of 1e12 the placement bonus rounded in steps of 0.25 and swallowed unit-vector
    differences: the plan came out below greedy's (helper-75)."""
    from models.assignment_solver import SIMILARITY_LIMIT

    long, fillers = np.sqrt(SIMILARITY_LIMIT) * 0.99, 1000
    b, c = [0, 0.8, 0.6, 0], [0, 0.7, np.sqrt(0.51), 0]  # b belongs in team 1 (0.8 against 0.7)
    if swap:
        b, c = c, b
    agents = np.array([[long, 0, 0, 0], b, c] + [[0, 0, 0, 1]] * fillers, dtype=np.float64)
    teams = np.array([[long, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
    problem = AssignmentProblem(agents, teams, [1, 1, fillers + 1], [[0, 2], [1, 2], [1, 2]] + [[2]] * fillers)
    optimal, greedy = solve_assignment(problem, matcher=matcher), greedy_assignment(problem)
    assert optimal.placed_count == greedy.placed_count == len(agents)
    assert optimal.total_similarity >= greedy.total_similarity - 1e-6
