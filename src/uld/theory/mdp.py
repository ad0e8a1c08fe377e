"""Random finite MDPs, in batches, and their exact tabular quantities.

Every array carries a leading batch axis B, so one call builds and solves many MDPs at once.
A state-action pair (s, a) is flattened to the row index s * A + a, which is the row order of the
feature matrix Z (|S||A| x d) and of the state-action transition matrix P_pi.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FiniteMDPs:
    """A batch of B finite discounted MDPs with the same numbers of states and actions."""

    P: np.ndarray
    """Transition probabilities P[b, s, a, s'], shape (B, S, A, S); each P[b, s, a] sums to 1."""
    r: np.ndarray
    """Expected reward r[b, s, a] = E[r | s, a], shape (B, S, A)."""
    gamma: float
    """Discount factor, in [0, 1)."""

    @property
    def n_states(self) -> int:
        return self.P.shape[1]

    @property
    def n_actions(self) -> int:
        return self.P.shape[2]

    @property
    def batch(self) -> int:
        return self.P.shape[0]


def _dirichlet(rng: np.random.Generator, shape: tuple[int, ...], concentration: float) -> np.ndarray:
    """Independent symmetric Dirichlet draws over the last axis of `shape`."""
    g = rng.gamma(concentration, size=shape)
    g = np.maximum(g, np.finfo(float).tiny)  # tiny concentrations can underflow a whole row to 0
    return g / g.sum(axis=-1, keepdims=True)


def random_mdps(
    rng: np.random.Generator,
    batch: int,
    n_states: int,
    n_actions: int,
    gamma: float = 0.9,
    concentration: float = 1.0,
) -> FiniteMDPs:
    """B MDPs with Dirichlet(concentration) next-state distributions and rewards uniform in [0, 1]."""
    P = _dirichlet(rng, (batch, n_states, n_actions, n_states), concentration)
    r = rng.uniform(0.0, 1.0, size=(batch, n_states, n_actions))
    return FiniteMDPs(P=P, r=r, gamma=gamma)


def random_policies(
    rng: np.random.Generator, batch: int, n_states: int, n_actions: int, concentration: float = 1.0
) -> np.ndarray:
    """Stochastic policies pi[b, s, a], shape (B, S, A), one Dirichlet draw per state."""
    return _dirichlet(rng, (batch, n_states, n_actions), concentration)


def random_features(rng: np.random.Generator, batch: int, n_pairs: int, dim: int) -> np.ndarray:
    """Gaussian state-action features Z, shape (B, |S||A|, d)."""
    return rng.standard_normal((batch, n_pairs, dim))


def random_basis_features(rng: np.random.Generator, batch: int, n_pairs: int) -> np.ndarray:
    """Square features Z = O diag(c), O a random orthogonal matrix, c in [0.5, 2]: exact, not one-hot.

    Well conditioned on purpose (cond(Z) <= 4), so a check on exact features measures the theorem
    and not the rounding of an ill-conditioned random basis.
    """
    O, _ = np.linalg.qr(rng.standard_normal((batch, n_pairs, n_pairs)))
    return O * rng.uniform(0.5, 2.0, size=(batch, 1, n_pairs))


def one_hot_features(batch: int, n_pairs: int) -> np.ndarray:
    """Tabular features Z = I, shape (B, |S||A|, |S||A|): the exact case of every linear check."""
    return np.broadcast_to(np.eye(n_pairs), (batch, n_pairs, n_pairs)).copy()


def state_action_transition(mdp: FiniteMDPs, pi: np.ndarray) -> np.ndarray:
    """P_pi[b, (s, a), (s', a')] = P(s' | s, a) pi(a' | s'), shape (B, |S||A|, |S||A|)."""
    B, S, A = mdp.r.shape
    return (mdp.P.reshape(B, S * A, S, 1) * pi[:, None, :, :]).reshape(B, S * A, S * A)


def next_features(mdp: FiniteMDPs, pi: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """Z'[(s, a)] = E_{s' ~ P(s, a), a' ~ pi(s')}[z_{s'a'}], shape (B, |S||A|, d)."""
    return state_action_transition(mdp, pi) @ Z


def q_values(mdp: FiniteMDPs, pi: np.ndarray) -> np.ndarray:
    """Q^pi by solving (I - gamma P_pi) q = r exactly, shape (B, S, A)."""
    B, S, A = mdp.r.shape
    lhs = np.eye(S * A) - mdp.gamma * state_action_transition(mdp, pi)
    return np.linalg.solve(lhs, mdp.r.reshape(B, S * A, 1)).reshape(B, S, A)


def state_values(q: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """V^pi(s) = sum_a pi(a | s) Q^pi(s, a), shape (B, S)."""
    return (pi * q).sum(axis=-1)


def stationary_distribution(P_pi: np.ndarray) -> np.ndarray:
    """The stationary distribution xi of each row-stochastic matrix in P_pi, shape (B, n).

    Solves xi (P_pi - I) = 0 with sum(xi) = 1, written as (I - P_pi^T + 1 1^T) xi = 1, which has a
    unique solution when the chain is irreducible (true for the dense random MDPs made here).
    """
    n = P_pi.shape[-1]
    lhs = np.eye(n) - np.swapaxes(P_pi, -1, -2) + np.ones((n, n))
    xi = np.linalg.solve(lhs, np.ones(P_pi.shape[:-1] + (1,)))[..., 0]
    xi = np.maximum(xi, 0.0)  # rounding can leave -1e-17 where the true mass is 0
    return xi / xi.sum(axis=-1, keepdims=True)


def greedy_policy(q: np.ndarray) -> np.ndarray:
    """Deterministic policy, one-hot on argmax_a q[b, s, a] (first index on ties), shape (B, S, A)."""
    return np.eye(q.shape[-1])[q.argmax(axis=-1)]


def value_iteration(mdp: FiniteMDPs, tol: float = 1e-13, max_iters: int = 100_000) -> np.ndarray:
    """Q* by iterating the Bellman optimality operator until successive iterates differ by < tol."""
    q = np.zeros_like(mdp.r)
    for _ in range(max_iters):
        q_next = mdp.r + mdp.gamma * np.einsum("bsat,bt->bsa", mdp.P, q.max(axis=-1))
        if np.abs(q_next - q).max() < tol:
            return q_next
        q = q_next
    return q


def policy_iteration(mdp: FiniteMDPs, max_iters: int = 1_000) -> tuple[np.ndarray, np.ndarray]:
    """Exact (pi*, Q*) by policy iteration; stops when no state's greedy action improves any more."""
    pi = greedy_policy(mdp.r)
    for _ in range(max_iters):
        q = q_values(mdp, pi)
        improved = q.max(axis=-1) > (pi * q).sum(axis=-1) + 1e-12  # strict gains only: no tie cycling
        if not improved.any():
            return pi, q
        pi = np.where(improved[..., None], greedy_policy(q), pi)
    return pi, q_values(mdp, pi)


@dataclass(frozen=True)
class AggregatedMDPs:
    """Ground MDPs built by splitting each state of an abstract MDP into several ground states.

    The embedding is phi(s, a) = (cluster[s], action_map[b, s, a]): a ground state-action goes to
    an abstract state and an abstract action, and the action relabelling differs between ground
    states, so phi groups state-actions rather than only states.
    """

    ground: FiniteMDPs
    """Ground MDPs, S = n_clusters * split states."""
    abstract: FiniteMDPs
    """Abstract MDPs on clusters, shape (B, K, A, K)."""
    cluster: np.ndarray
    """cluster[s]: the abstract state of ground state s, shape (S,)."""
    action_map: np.ndarray
    """action_map[b, s, a]: the abstract action of ground action a in ground state s, (B, S, A)."""

    def lift(self, abstract_values: np.ndarray) -> np.ndarray:
        """A function on abstract state-actions (B, K, A) read at phi(s, a): shape (B, S, A)."""
        b = np.arange(self.action_map.shape[0])[:, None, None]
        return abstract_values[b, self.cluster[None, :, None], self.action_map]

    def by_embedding(self, ground_values: np.ndarray) -> np.ndarray:
        """Ground values (B, S, A) rearranged to (B, K, split, A), indexed by abstract action."""
        B, S, A = ground_values.shape
        out = np.empty_like(ground_values)
        np.put_along_axis(out, self.action_map, ground_values, axis=-1)
        return out.reshape(B, self.abstract.n_states, S // self.abstract.n_states, A)


def aggregated_mdps(
    rng: np.random.Generator,
    batch: int,
    n_clusters: int,
    n_actions: int,
    split: int,
    gamma: float = 0.9,
    abstract: FiniteMDPs | None = None,
) -> AggregatedMDPs:
    """Ground MDPs whose embedding preserves reward and next-cluster distribution by construction.

    Ground state s in cluster k copies the abstract reward and the abstract probability of each
    next cluster, then spreads each next cluster's mass over that cluster's ground states with its
    own random weights, so ground-level transitions within a cluster differ between ground states.
    The abstract MDPs are random unless given.
    """
    if abstract is None:
        abstract = random_mdps(rng, batch, n_clusters, n_actions, gamma)
    n_states = n_clusters * split
    cluster = np.arange(n_states) // split
    action_map = rng.permuted(np.broadcast_to(np.arange(n_actions), (batch, n_states, n_actions)), axis=-1)
    b = np.arange(batch)[:, None, None]
    r = abstract.r[b, cluster[None, :, None], action_map]
    cluster_probs = abstract.P[b, cluster[None, :, None], action_map]  # (B, S, A, K)
    within = _dirichlet(rng, (batch, n_states, n_actions, n_clusters, split), 1.0)
    P = (cluster_probs[..., None] * within).reshape(batch, n_states, n_actions, n_states)
    ground = FiniteMDPs(P=P, r=r, gamma=abstract.gamma)
    return AggregatedMDPs(ground=ground, abstract=abstract, cluster=cluster, action_map=action_map)
