"""Optimal bulk assignment of agents to team seats, as a pure function over vectors.

Given agent and team embeddings, each team's free seats and, per agent, the teams it is
eligible for, :func:`solve_assignment` places each agent in at most one eligible team
without exceeding any team's seats. The objective is lexicographic: first maximize the
NUMBER of agents placed, then, among all placements of that size, maximize the total
similarity (the sum of ``dot(agent, team)`` over placed agents; cosine similarity for
unit-norm vectors). Similarity may be negative, so maximizing it alone would leave agents
out; we prefer placing everyone who can be placed. The eligibility graph is split into
connected components (teams with no free seat are left out, so they link nothing) and each
component is a rectangular assignment problem over the component's agents and its teams'
seats, solved exactly with SciPy's Jonker-Volgenant solvers. Nothing here touches a
database, Flask or Celery; :func:`greedy_assignment`, :func:`exact_assignment_bruteforce`
and :func:`exact_assignment_milp` are the baseline and the independent reference solvers
used by tests and the benchmark.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, OptimizeResult, linear_sum_assignment, milp
from scipy.sparse import coo_array, csr_array
from scipy.sparse.csgraph import connected_components, min_weight_full_bipartite_matching

from models.errors import InvalidInput

NO_ELIGIBLE_TEAM = "no-eligible-team"
ELIGIBLE_TEAMS_FULL = "eligible-teams-full"
# Above this many agent x seat cells (128 MiB of float64) a component is solved on the
# sparse graph of its eligible pairs instead, when that graph stores fewer entries.
DENSE_CELL_LIMIT = 4_000 * 4_000
# A component whose dense matrix and sparse graph both exceed this is planned greedily: the exact
# matchers need about 23 bytes a cell (6,000 agents of one role: 838 MiB) and O(n^3) time.
EXACT_CELL_LIMIT = 2 * DENSE_CELL_LIMIT
GREEDY_METHOD = "greedy-large-component"
MATCHERS = ("auto", "dense", "sparse")
SIMILARITY_CHUNK = 2_048  # agents per matrix product when scoring eligible pairs
GREEDY_SLICE = 131_072  # pairs the greedy matcher turns into Python ints at a time
BRUTEFORCE_LIMIT = 200_000  # largest search space exact_assignment_bruteforce accepts


@dataclass(frozen=True, eq=False)
class AssignmentProblem:
    """Embeddings, free seats and eligibility; eligible[a] lists team indices for agent a."""

    agent_vectors: np.ndarray  # (n_agents, dim), float32 or float64
    team_vectors: np.ndarray  # (n_teams, dim)
    free_seats: Sequence[int]  # per team, >= 0
    eligible: Sequence[Sequence[int]]  # per agent


@dataclass(frozen=True)
class AssignmentResult:
    """Who goes where, who was left out and why, and the similarity achieved."""

    placements: dict[int, int]  # agent index -> team index
    unplaced: dict[int, str]  # agent index -> NO_ELIGIBLE_TEAM | ELIGIBLE_TEAMS_FULL
    total_similarity: float
    method: str

    @property
    def placed_count(self) -> int:
        return len(self.placements)


@dataclass(frozen=True)
class _Pairs:
    """Validated, de-duplicated eligible (agent, team) pairs, sorted by agent then team."""

    agents: np.ndarray
    teams: np.ndarray
    seats: np.ndarray  # free seats per team, int64


def solve_assignment(problem: AssignmentProblem, *, matcher: str = "auto") -> AssignmentResult:
    """The optimal assignment: most agents placed, then highest total similarity.

    Every placed agent is in one of its eligible teams, no team gets more agents than its
    free seats, and every agent is either placed or listed in ``unplaced`` with a reason.
    Pure: reads ``problem`` only, deterministic for a given input. ``matcher`` "auto" solves
    a component on its dense agent x seat matrix unless that exceeds ``DENSE_CELL_LIMIT``
    cells and its sparse graph of eligible agent-seat edges is smaller; "dense" and
    "sparse" force one solver (for tests and benchmarks). Both are exact. Under "auto", a
    component too large for either (``EXACT_CELL_LIMIT``) is planned greedily instead, and
    the method says so (``GREEDY_METHOD``): not optimal, but it fits in memory and time.
    """
    if matcher not in MATCHERS:
        raise InvalidInput(f"matcher must be one of {MATCHERS}")
    pairs = _open_pairs(problem)
    placements: dict[int, int] = {}
    methods: set[str] = set()
    for comp_agents, comp_pairs in _components(pairs, len(problem.eligible)):
        agents, teams, method = _solve_component(problem, pairs, comp_agents, comp_pairs, matcher)
        placements.update(zip(agents.tolist(), teams.tolist(), strict=True))
        methods.add(method)
    return _result(problem, placements, "+".join(sorted(methods)) or "no-component")


def greedy_assignment(problem: AssignmentProblem) -> AssignmentResult:
    """Baseline: take eligible pairs best-similarity-first while agent and seat are free."""
    pairs = _open_pairs(problem)
    sims = _pair_similarities(problem.agent_vectors, problem.team_vectors, pairs.agents, pairs.teams)
    rows, cols = _greedy_matching(pairs.agents, pairs.teams, sims, pairs.seats)
    return _result(problem, dict(zip(rows.tolist(), cols.tolist(), strict=True)), "greedy")


def _greedy_matching(agents: np.ndarray, teams: np.ndarray, sims: np.ndarray, seats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(agents, teams) taken best-similarity-first while agent and seat are free."""
    order = np.lexsort((teams, agents, -sims))
    seats_left = np.asarray(seats).tolist()
    free, wanting = sum(seats_left), len(_sorted_unique(agents))
    placed: dict[int, int] = {}
    for start in range(0, len(order), GREEDY_SLICE):  # a slice at a time: no Python int per pair
        chunk = order[start : start + GREEDY_SLICE]
        for agent, team in zip(agents[chunk].tolist(), teams[chunk].tolist(), strict=True):
            if agent not in placed and seats_left[team] > 0:
                placed[agent] = team
                seats_left[team] -= 1
        if len(placed) == wanting or len(placed) == free:
            break
    return np.fromiter(placed.keys(), dtype=np.int64, count=len(placed)), np.fromiter(placed.values(), dtype=np.int64, count=len(placed))


def exact_assignment_bruteforce(problem: AssignmentProblem) -> AssignmentResult:
    """Reference for tiny instances: try every choice (a team or none) for every agent."""
    pairs = _open_pairs(problem)
    options = [pairs.teams[pairs.agents == agent].tolist() for agent in range(len(problem.eligible))]
    if math.prod(len(choices) + 1 for choices in options) > BRUTEFORCE_LIMIT:
        raise InvalidInput("instance too large for the exhaustive search")
    sims = _similarity_matrix(problem)
    best: tuple[int, float, tuple[int | None, ...]] = (0, 0.0, (None,) * len(options))
    for choice in itertools.product(*[[None, *choices] for choices in options]):
        if _fits(choice, pairs.seats):
            placed = [(agent, team) for agent, team in enumerate(choice) if team is not None]
            score = (len(placed), math.fsum(sims[agent, team] for agent, team in placed))
            if score > best[:2]:
                best = (*score, choice)
    placements = {agent: team for agent, team in enumerate(best[2]) if team is not None}
    return _result(problem, placements, "bruteforce")


def exact_assignment_milp(problem: AssignmentProblem) -> AssignmentResult:
    """Reference by a different route: two-stage integer program over (agent, team) pairs.

    No seat expansion and no big-M: stage one maximizes the count, stage two fixes the count
    and maximizes similarity. The constraint matrix stays totally unimodular (the count row
    is the sum of the agent rows), so the LP root is already integral; HiGHS's presolve is
    off because it is what takes the time here. Tolerances are HiGHS's (about 1e-7).
    """
    pairs = _open_pairs(problem)
    if len(pairs.agents) == 0:
        return _result(problem, {}, "milp")
    sims = _pair_similarities(problem.agent_vectors, problem.team_vectors, pairs.agents, pairs.teams)
    one_team_each = _rows_le(pairs.agents, len(problem.eligible), np.ones(len(problem.eligible)))
    capacity = _rows_le(pairs.teams, len(pairs.seats), pairs.seats)
    ones = np.ones(len(sims))
    count = _binary_program(-ones, [one_team_each, capacity])
    at_least = LinearConstraint(ones[np.newaxis, :], round(-count.fun) - 0.5, np.inf)
    best = _binary_program(-sims, [one_team_each, capacity, at_least])
    chosen = np.flatnonzero(best.x > 0.5)
    return _result(problem, dict(zip(pairs.agents[chosen].tolist(), pairs.teams[chosen].tolist(), strict=True)), "milp")


def _binary_program(cost: np.ndarray, constraints: list[LinearConstraint]) -> OptimizeResult:
    ones = np.ones(len(cost))
    return milp(cost, constraints=constraints, integrality=ones, bounds=Bounds(0, 1), options={"presolve": False})


def _rows_le(owners: np.ndarray, n_rows: int, upper: np.ndarray) -> LinearConstraint:
    """Sum of the pair variables owned by each row is at most that row's ``upper``."""
    matrix = csr_array((np.ones(len(owners)), (owners, np.arange(len(owners)))), shape=(n_rows, len(owners)))
    return LinearConstraint(matrix, -np.inf, upper)


def _fits(choice: tuple[int | None, ...], seats: np.ndarray) -> bool:
    taken = np.bincount([team for team in choice if team is not None], minlength=len(seats))
    return bool(np.all(taken <= seats))


# --- validation and eligible pairs -------------------------------------------------


def _open_pairs(problem: AssignmentProblem) -> _Pairs:
    """Validate ``problem``; return its eligible pairs whose team has a free seat."""
    n_agents, n_teams = _check_shapes(problem)
    seats = _check_seats(problem.free_seats, n_teams)
    lengths = [len(teams) for teams in problem.eligible]
    flat = itertools.chain.from_iterable(problem.eligible)
    teams = np.fromiter(map(operator.index, flat), dtype=np.int64, count=sum(lengths))
    if len(teams) and (teams.min() < 0 or teams.max() >= n_teams):
        raise InvalidInput("eligible team index out of range")
    agents = np.repeat(np.arange(n_agents, dtype=np.int64), lengths)
    keys = _sorted_unique(agents * max(n_teams, 1) + teams)
    agents, teams = keys // max(n_teams, 1), keys % max(n_teams, 1)
    has_seat = seats[teams] > 0
    return _Pairs(agents[has_seat], teams[has_seat], seats)


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique by sort-and-compare: NumPy 2's hash-based unique is far slower on 10^6 ints."""
    ordered = np.sort(values)
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))] if len(ordered) else ordered


# Embeddings are unit vectors (similarities in [-1, 1]). Bounding the largest similarity keeps
# the placement bonus (2 x placements x it) near 1e8 at most, whose rounding step (about 1e-8)
# stays far below any similarity difference that matters; at 1e12 it was 0.25 (helper-75).
SIMILARITY_LIMIT = 1e3


def _check_shapes(problem: AssignmentProblem) -> tuple[int, int]:
    agents, teams = problem.agent_vectors, problem.team_vectors
    if agents.ndim != 2 or teams.ndim != 2 or agents.shape[1] != teams.shape[1]:
        raise InvalidInput("agent and team vectors must be 2-D with the same dimension")
    if len(problem.eligible) != len(agents) or len(problem.free_seats) != len(teams):
        raise InvalidInput("need one eligibility list per agent and one seat count per team")
    if not (np.all(np.isfinite(agents)) and np.all(np.isfinite(teams))):
        raise InvalidInput("vectors must be finite")
    # Every similarity is at most the product of the largest norms (Cauchy-Schwarz): bounding
    # it keeps the dot products and the placement bonus finite and fine-grained enough.
    with np.errstate(over="ignore"):  # a norm too large for a float is inf, and refused
        largest = [float(np.linalg.norm(np.asarray(v, dtype=np.float64), axis=1).max(initial=0.0)) for v in (agents, teams)]
    if not largest[0] * largest[1] <= SIMILARITY_LIMIT:
        raise InvalidInput(f"vectors too long: the largest agent and team norms may multiply to at most {SIMILARITY_LIMIT:g}")
    return len(agents), len(teams)


def _check_seats(free_seats: Sequence[int], n_teams: int) -> np.ndarray:
    seats = np.fromiter(map(operator.index, free_seats), dtype=np.int64, count=n_teams)
    if len(seats) and seats.min() < 0:
        raise InvalidInput("free seats cannot be negative")
    return seats


# --- components --------------------------------------------------------------------


def _components(pairs: _Pairs, n_agents: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per connected component: its agents and the positions of its pairs in ``pairs``.

    Positions stay in ``pairs`` order, so each component's pairs remain agent-sorted.
    """
    if len(pairs.agents) == 0:
        return
    n_nodes = n_agents + len(pairs.seats)
    edges = coo_array((np.ones(len(pairs.agents)), (pairs.agents, n_agents + pairs.teams)), shape=(n_nodes, n_nodes))
    _, labels = connected_components(edges, directed=False)
    pair_labels = labels[pairs.agents]
    order = np.argsort(pair_labels, kind="stable")
    bounds = np.flatnonzero(np.diff(pair_labels[order])) + 1
    for positions in np.split(order, bounds):
        yield _sorted_unique(pairs.agents[positions]), positions


def _solve_component(
    problem: AssignmentProblem, pairs: _Pairs, agents: np.ndarray, positions: np.ndarray, matcher: str
) -> tuple[np.ndarray, np.ndarray, str]:
    """Optimal placements inside one component, as (global agents, global teams, method)."""
    teams = _sorted_unique(pairs.teams[positions])
    local_agent = np.searchsorted(agents, pairs.agents[positions])
    local_team = np.searchsorted(teams, pairs.teams[positions])
    sims = _pair_similarities(problem.agent_vectors[agents], problem.team_vectors[teams], local_agent, local_team)
    # A team never needs more seat columns than it has eligible agents in the component.
    seats = np.minimum(pairs.seats[teams], np.bincount(local_team, minlength=len(teams)))
    cells = len(agents) * int(seats.sum())  # of the dense agent x seat matrix
    edges = int(seats[local_team].sum()) + len(agents)  # of the sparse graph (its "unplaced" column included)
    if matcher == "auto" and min(cells, edges) > EXACT_CELL_LIMIT:
        rows, cols = _greedy_matching(local_agent, local_team, sims, seats)
        return agents[rows], teams[cols], GREEDY_METHOD
    bonus = _placement_bonus(sims, min(len(agents), int(seats.sum())))
    # Dense is faster: sparse only when the dense matrix is too big and the sparse graph smaller.
    if matcher == "sparse" or (matcher == "auto" and cells > DENSE_CELL_LIMIT and edges < cells):
        rows, cols = _sparse_matching(local_agent, local_team, sims + bonus, len(agents), seats)
        return agents[rows], teams[cols], "sparse-lsa"
    rows, cols = _dense_matching(local_agent, local_team, sims + bonus, len(agents), seats)
    return agents[rows], teams[cols], "dense-lsa"


def _placement_bonus(sims: np.ndarray, max_placed: int) -> float:
    """A bonus per placement large enough that one more placement always wins.

    A matching of size k+1 and one of size k differ in similarity by less than
    (2*max_placed - 1) * max|sim|, so with weight = bonus + sim and this bonus every
    larger matching outweighs every smaller one, and every eligible weight is > 0.
    """
    return 2.0 * max_placed * float(np.abs(sims).max()) + 1.0


# --- the two exact matchers --------------------------------------------------------


def _dense_matching(
    agents: np.ndarray, teams: np.ndarray, weights: np.ndarray, n_agents: int, seats: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-weight matching on the dense agents x seats matrix.

    Ineligible cells weigh 0. SciPy's rectangular solver fills min(rows, cols) cells, so it
    may pick some 0 cells; we drop those. That is still optimal: every eligible weight is
    > 0 (see :func:`_placement_bonus`), so the best full assignment is the best eligible
    matching padded with zero cells, which exist because there are at least as many
    columns (or rows) as the matching leaves uncovered. Picking a 0 cell is exactly as
    good as leaving the agent unassigned, never better.
    """
    by_team = np.zeros((n_agents, len(seats)))
    by_team[agents, teams] = weights
    seat_team = np.repeat(np.arange(len(seats)), seats)
    rows, cols = linear_sum_assignment(by_team[:, seat_team], maximize=True)
    eligible = by_team[rows, seat_team[cols]] > 0
    return rows[eligible], seat_team[cols[eligible]]


def _sparse_matching(
    agents: np.ndarray, teams: np.ndarray, weights: np.ndarray, n_agents: int, seats: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-weight matching on the sparse graph of eligible agent-seat edges (LAPJVsp).

    Memory is O(eligible pairs x seats) rather than O(agents x all seats). The sparse
    solver needs a matching covering every agent, so each agent gets a private "unplaced"
    column of weight 1, and every real edge gets +1 as well (zero weights are not allowed):
    each agent is matched exactly once, so the shift adds the same n_agents to every
    solution and the optimum is unchanged.
    """
    reps = seats[teams]
    first_seat = np.concatenate(([0], np.cumsum(seats)[:-1]))
    edge_starts = np.repeat(np.cumsum(reps) - reps, reps)
    seat_cols = np.repeat(first_seat[teams], reps) + np.arange(int(reps.sum())) - edge_starts
    n_seats = int(seats.sum())
    rows = np.concatenate((np.repeat(agents, reps), np.arange(n_agents)))
    cols = np.concatenate((seat_cols, n_seats + np.arange(n_agents)))
    data = np.concatenate((np.repeat(weights + 1.0, reps), np.ones(n_agents)))
    graph = csr_array((data, (rows, cols)), shape=(n_agents, n_seats + n_agents))
    matched_rows, matched_cols = min_weight_full_bipartite_matching(graph, maximize=True)
    placed = matched_cols < n_seats
    seat_team = np.repeat(np.arange(len(seats)), seats)
    return matched_rows[placed], seat_team[matched_cols[placed]]


# --- similarities and results ------------------------------------------------------


def _pair_similarities(
    agent_vectors: np.ndarray, team_vectors: np.ndarray, agents: np.ndarray, teams: np.ndarray
) -> np.ndarray:
    """dot(agent, team) in float64 for each pair; pairs must be sorted by agent."""
    sims = np.empty(len(agents))
    team_block = np.asarray(team_vectors, dtype=np.float64).T
    bounds = np.searchsorted(agents, np.arange(0, len(agent_vectors) + SIMILARITY_CHUNK, SIMILARITY_CHUNK))
    for start, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        if lo == hi:
            continue
        first = start * SIMILARITY_CHUNK
        block = np.asarray(agent_vectors[first : first + SIMILARITY_CHUNK], dtype=np.float64) @ team_block
        sims[lo:hi] = block[agents[lo:hi] - first, teams[lo:hi]]
    return sims


def _similarity_matrix(problem: AssignmentProblem) -> np.ndarray:
    agents = np.asarray(problem.agent_vectors, dtype=np.float64)
    return agents @ np.asarray(problem.team_vectors, dtype=np.float64).T


def _result(problem: AssignmentProblem, placements: dict[int, int], method: str) -> AssignmentResult:
    """Package placements with the unplaced reasons and the exact total similarity."""
    agents = np.fromiter(placements.keys(), dtype=np.int64, count=len(placements))
    teams = np.fromiter(placements.values(), dtype=np.int64, count=len(placements))
    sims = np.einsum(
        "ij,ij->i",
        np.asarray(problem.agent_vectors[agents], dtype=np.float64),
        np.asarray(problem.team_vectors[teams], dtype=np.float64),
    )
    unplaced = {
        agent: ELIGIBLE_TEAMS_FULL if len(teams_ok) else NO_ELIGIBLE_TEAM
        for agent, teams_ok in enumerate(problem.eligible)
        if agent not in placements
    }
    return AssignmentResult(dict(sorted(placements.items())), unplaced, math.fsum(sims.tolist()), method)
