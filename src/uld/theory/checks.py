"""Numerical checks, on random finite MDPs, of the results ULD/MR.Q rests on (docs/theory.md).

Notation follows the issue: Z holds one feature row z_sa per state-action, Z' = P_pi Z the expected
next features under the evaluated policy pi, D = diag(xi) the weighting of state-actions in every
least-squares fit (xi sums to 1; uniform xi = 1/|S||A| gives the plain (Z^T Z)^{-1} Z^T fits).
Each check returns a CheckResult; `run_all` runs them all from one seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from uld.theory import mdp as M


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check over a set of random MDPs."""

    name: str
    """Short name of the check, e.g. "td_fixed_point"."""
    measure: str
    """What `worst` is, e.g. "max |gap|" or "min slack"."""
    worst: float
    """The worst case of `measure` over all MDPs."""
    tolerance: float
    """The threshold `worst` is held to."""
    must_be: Literal["below", "above"]
    """"below" when `worst` must stay under `tolerance` (gaps), "above" when over it (slacks, margins)."""
    n_mdps: int
    """Number of random MDPs the check ran on."""
    passed: bool
    """True when the worst case is on the right side of the tolerance."""
    detail: str = ""
    """Secondary numbers, one line."""


def _split(total: int, parts: int) -> list[int]:
    """`total` MDPs shared as evenly as possible between `parts` cases."""
    return [total // parts + (i < total % parts) for i in range(parts)]


# Linear models on features --------------------------------------------------------------------


def _weighted_gram(Z: np.ndarray, xi: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Z^T D Y for a batch, D = diag(xi)."""
    return np.swapaxes(Z, -1, -2) @ (xi[..., None] * Y)


def linear_model(
    Z: np.ndarray, Z_next: np.ndarray, r: np.ndarray, xi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least-squares reward weights w_r (B, d) and linear dynamics W_d (B, d, d).

    w_r = (Z^T D Z)^{-1} Z^T D r and W_d = (Z^T D Z)^{-1} Z^T D Z', so z_sa^T w_r predicts
    E[r | s, a] and z_sa^T W_d predicts E[z_s'a' | s, a].
    """
    # Solved through a QR factorisation of D^{1/2} Z, which is the same least-squares solution as the
    # normal equations but conditioned like Z rather than like Z^T D Z.
    root = np.sqrt(xi)[..., None]
    Q, R = np.linalg.qr(root * Z)
    targets = np.swapaxes(Q, -1, -2) @ (root * np.concatenate([r[..., None], Z_next], axis=-1))
    solution = np.linalg.solve(R, targets)
    return solution[..., 0], solution[..., 1:]


def model_based_weights(w_r: np.ndarray, W_d: np.ndarray, gamma: float) -> np.ndarray:
    """w = (I - gamma W_d)^{-1} w_r, the closed form of sum_t gamma^t W_d^t w_r."""
    d = w_r.shape[-1]
    return np.linalg.solve(np.eye(d) - gamma * W_d, w_r[..., None])[..., 0]


def rollout_weights(
    w_r: np.ndarray, W_d: np.ndarray, gamma: float, max_steps: int = 20_000
) -> tuple[np.ndarray, np.ndarray]:
    """w = sum_t gamma^t W_d^t w_r by rolling the linear model forward until the terms vanish.

    Returns the partial sum (B, d) and which MDPs' terms fell below 1e-16 of the sum (B,) within
    max_steps; the series diverges when gamma W_d has an eigenvalue of modulus >= 1.
    """
    total, term = np.zeros_like(w_r), w_r.copy()
    with np.errstate(over="ignore", invalid="ignore"):  # diverging series overflow; they are flagged
        for _ in range(max_steps):
            total = total + term
            term = gamma * (W_d @ term[..., None])[..., 0]
            small = np.abs(term).max(axis=-1) <= 1e-16 * np.maximum(1.0, np.abs(total).max(axis=-1))
            small &= np.isfinite(total).all(axis=-1)
            if small.all() or not np.isfinite(term).all():
                break
    return total, small


def td_fixed_point(
    Z: np.ndarray, Z_next: np.ndarray, r: np.ndarray, xi: np.ndarray, gamma: float
) -> np.ndarray:
    """The fixed point of expected linear semi-gradient TD: w = (Z^T D (Z - gamma Z'))^{-1} Z^T D r."""
    lhs = _weighted_gram(Z, xi, Z - gamma * Z_next)
    return np.linalg.solve(lhs, _weighted_gram(Z, xi, r[..., None]))[..., 0]


def td_iterate(
    Z: np.ndarray,
    Z_next: np.ndarray,
    r: np.ndarray,
    xi: np.ndarray,
    gamma: float,
    tol: float = 1e-12,
    max_iters: int = 20_000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run expected semi-gradient TD, w <- w + alpha Z^T D (r + gamma Z' w - Z w), from w = 0.

    The update is w <- w + alpha (b + A w) with A = Z^T D (gamma Z' - Z); it converges for small
    enough alpha exactly when every eigenvalue lambda of A has a negative real part (stable). The
    step size alpha = min_j -Re(lambda_j) / |lambda_j|^2, half the largest step that keeps every
    |1 + alpha lambda_j| below 1, is chosen per MDP. An MDP counts as converged once its step, divided by
    (1 - contraction rate), is below tol relative to max(1, |w|): an estimate of the distance left.

    Returns the final w (B, d), stable (B,) and converged (B,).
    """
    A = _weighted_gram(Z, xi, gamma * Z_next - Z)
    b = _weighted_gram(Z, xi, r[..., None])
    eig = np.linalg.eigvals(A)
    stable = (eig.real < 0).all(axis=-1)
    alpha = np.where(stable, (-eig.real / np.abs(eig) ** 2).min(axis=-1), 0.0)
    rate = np.abs(1 + alpha[:, None] * eig).max(axis=-1)
    alpha = alpha[:, None, None]
    w = np.zeros_like(b)
    converged = np.zeros(len(w), dtype=bool)
    for it in range(1, max_iters + 1):
        update = alpha * (b + A @ w)
        w = w + update
        if it % 50 == 0 or it == max_iters:  # checking costs as much as a step: not every step
            step = np.abs(update).max(axis=(-2, -1)) / np.maximum(1.0, np.abs(w).max(axis=(-2, -1)))
            converged = stable & (step < tol * (1 - rate))
            if (converged == stable).all():
                break
    return w[..., 0], stable, converged


# Check 1: TD fixed point = model-based solution ---------------------------------------------------


def check_td_fixed_point(rng: np.random.Generator, n_mdps: int) -> CheckResult:
    """Linear TD's fixed point equals the value weights of the least-squares reward + dynamics model.

    Compares, per MDP: (I - gamma W_d)^{-1} w_r, the rolled-out sum_t gamma^t W_d^t w_r, the
    closed-form TD fixed point, and the result of running expected TD. Two weightings of the
    least squares: the on-policy stationary distribution of (s, a) under pi, where TD provably
    converges, and uniform weights, where TD may diverge; there it is compared where it converges.
    """
    # (S, A, d, Dirichlet concentration of P, gamma); small concentrations give near-sparse
    # transitions, and the last case is where uniform-weight TD diverges now and then
    cases = [(4, 2, 3, 1.0, 0.9), (6, 3, 6, 0.1, 0.9), (8, 3, 12, 0.3, 0.9), (8, 3, 3, 0.1, 0.9),
             (4, 2, 3, 0.1, 0.99)]
    gaps = dict.fromkeys(("closed forms", "rollout", "TD iterate"), 0.0)
    counts = {weighting: dict.fromkeys(("TD stable", "TD converged", "rollout converged"), 0)
              for weighting in ("uniform", "on-policy")}
    for (S, A, d, concentration, gamma), batch in zip(cases, _split(n_mdps, len(cases))):
        mdps = M.random_mdps(rng, batch, S, A, gamma, concentration)
        pi = M.random_policies(rng, batch, S, A)
        Z = M.random_features(rng, batch, S * A, d)
        Z_next = M.next_features(mdps, pi, Z)
        r = mdps.r.reshape(batch, S * A)
        on_policy = M.stationary_distribution(M.state_action_transition(mdps, pi))
        for weighting, xi in (("uniform", np.full_like(r, 1.0 / (S * A))), ("on-policy", on_policy)):
            w_r, W_d = linear_model(Z, Z_next, r, xi)
            w_model = model_based_weights(w_r, W_d, gamma)
            w_td = td_fixed_point(Z, Z_next, r, xi, gamma)
            scale = np.maximum(1.0, np.abs(w_td).max(axis=-1))
            w_roll, rolled = rollout_weights(w_r, W_d, gamma)
            w_iter, stable, converged = td_iterate(Z, Z_next, r, xi, gamma)
            for key, w, compared in (("closed forms", w_model, slice(None)), ("rollout", w_roll, rolled),
                                     ("TD iterate", w_iter, converged)):
                gap = (np.abs(w - w_td).max(axis=-1) / scale)[compared]
                gaps[key] = max(gaps[key], float(gap.max(initial=0.0)))
            for key, mask in (("TD stable", stable), ("TD converged", converged), ("rollout converged", rolled)):
                counts[weighting][key] += int(mask.sum())
    tolerance = 1e-8
    # on-policy weighting is where TD is provably stable and the rollout provably converges
    on_policy = counts["on-policy"]
    worst_gap = max(gaps.values())
    passed = worst_gap < tolerance and on_policy["TD stable"] == on_policy["rollout converged"] == n_mdps
    detail = "; ".join(
        [", ".join(f"{key} gap {gap:.1e}" for key, gap in gaps.items())]
        + [f"{weighting} weights: " + ", ".join(f"{key} {count}/{n_mdps}" for key, count in tally.items())
           for weighting, tally in counts.items()]
    )
    return CheckResult("td_fixed_point", "max |gap| / max(1, |w|)", worst_gap, tolerance, "below", n_mdps, passed,
                       detail)


# Check 2: value error bound ----------------------------------------------------------------------


def value_error_bound(
    Z: np.ndarray,
    Z_next: np.ndarray,
    r: np.ndarray,
    w_r: np.ndarray,
    W_d: np.ndarray,
    w: np.ndarray,
    gamma: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The bound on max |z_sa^T w - Q^pi(s, a)| as stated, and its tighter form, each (B,).

    Stated: 1/(1-gamma) max_sa (|z^T w_r - r| + max_i |w_i| sum_i |(z^T W_d - E[z'])_i|).
    Tighter: 1/(1-gamma) max_sa |(z^T w_r - r) + gamma (z^T W_d - E[z']) w|, which the proof gives
    (Q - Q^pi = (I - gamma P_pi)^{-1} (reward error + gamma dynamics error w)).
    """
    reward_error = Z @ w_r[..., None] - r[..., None]  # (B, n, 1)
    dynamics_error = Z @ W_d - Z_next  # (B, n, d)
    w_max = np.abs(w).max(axis=-1, keepdims=True)
    stated = np.abs(reward_error[..., 0]) + w_max * np.abs(dynamics_error).sum(axis=-1)
    tighter = np.abs(reward_error + gamma * dynamics_error @ w[..., None])[..., 0]
    return stated.max(axis=-1) / (1 - gamma), tighter.max(axis=-1) / (1 - gamma)


def check_value_error_bound(rng: np.random.Generator, n_mdps: int) -> CheckResult:
    """|Q(s, a) - Q^pi(s, a)| is within the reward + dynamics model-error bound, Q = Z w.

    Inexact cases: Gaussian features with d < |S||A|. Exact cases: one-hot features (Z = I) and
    a random well-conditioned square basis, where the model errors and so the bound are ~0.
    """
    # (S, A, d, gamma); d=None means one-hot, d = S*A means a random square basis
    cases = [(5, 2, 1, 0.9), (5, 2, 4, 0.9), (6, 3, 9, 0.5), (6, 3, 17, 0.99), (8, 4, 8, 0.9),
             (4, 2, None, 0.9), (6, 3, None, 0.99), (5, 3, 15, 0.9)]
    slacks, tight_slacks, ratios, tight_ratios, exact_errors, inexact_slacks = [], [], [], [], [], []
    for (S, A, d, gamma), per_case in zip(cases, _split(n_mdps, len(cases))):
        n = S * A
        mdps = M.random_mdps(rng, per_case, S, A, gamma)
        pi = M.random_policies(rng, per_case, S, A)
        if d is None:
            Z = M.one_hot_features(per_case, n)
        elif d == n:
            Z = M.random_basis_features(rng, per_case, n)
        else:
            Z = M.random_features(rng, per_case, n, d)
        Z_next = M.next_features(mdps, pi, Z)
        r = mdps.r.reshape(per_case, n)
        w_r, W_d = linear_model(Z, Z_next, r, np.full_like(r, 1.0 / n))
        w = model_based_weights(w_r, W_d, gamma)
        error = np.abs((Z @ w[..., None])[..., 0] - M.q_values(mdps, pi).reshape(per_case, n)).max(axis=-1)
        bound, tighter = value_error_bound(Z, Z_next, r, w_r, W_d, w, gamma)
        slacks.append(bound - error)
        tight_slacks.append(tighter - error)
        if d is None or d == n:
            exact_errors.append(error)
        else:
            ratios.append(error / bound)
            tight_ratios.append(error / tighter)
            inexact_slacks.append(bound - error)
    ratios, tight_ratios = np.concatenate(ratios), np.concatenate(tight_ratios)
    exact_error = float(np.concatenate(exact_errors).max())
    worst, tight_worst = float(np.concatenate(slacks).min()), float(np.concatenate(tight_slacks).min())
    tolerance = -1e-9
    passed = worst >= tolerance and tight_worst >= tolerance and exact_error < 1e-9
    detail = (
        f"inexact features: min slack {float(np.concatenate(inexact_slacks).min()):.3g}, "
        f"error/bound in [{ratios.min():.3g}, {ratios.max():.3g}]; "
        f"max error {exact_error:.1e} on exact features; "
        f"tighter gamma-weighted bound: min slack {tight_worst:.1e}, "
        f"error/bound in [{tight_ratios.min():.3g}, {tight_ratios.max():.3g}] on inexact features"
    )
    return CheckResult("value_error_bound", "min slack (bound - error)", worst, tolerance, "above",
                       n_mdps, passed, detail)


# Check 3: embeddings that preserve reward and next-embedding distribution -------------------------

_AGGREGATION_CASES = [(2, 2, 3), (3, 2, 2), (4, 3, 3)]  # (clusters K, actions A, ground states per cluster)


def _embedding_spread(agg: M.AggregatedMDPs, ground_q: np.ndarray) -> np.ndarray:
    """How far ground Q^pi is from every function of the embedding, per MDP (B,).

    The best sup-norm fit of Q^pi by a function of phi(s, a) is the mid-range of each embedding
    cluster, so the distance is half the largest within-cluster range.
    """
    grouped = agg.by_embedding(ground_q)  # (B, K, split, A)
    return ((grouped.max(axis=2) - grouped.min(axis=2)) / 2).max(axis=(-2, -1))


def check_embedding_values(rng: np.random.Generator, n_mdps: int, policies_per_mdp: int = 3) -> CheckResult:
    """With an embedding that preserves reward and next-embedding distribution, the abstract MDP's
    values, read through the embedding, are the ground values, and its optimal policy is optimal.

    For random policies acting through the embedding: abstract Q^pi lifted to ground vs ground
    Q^pi. For control: abstract value iteration's greedy policy, lifted, vs ground V* from policy
    iteration (and abstract V* lifted vs ground V*).
    """
    policy_gap, optimal_gap = 0.0, 0.0
    for (K, A, split), batch in zip(_AGGREGATION_CASES, _split(n_mdps, len(_AGGREGATION_CASES))):
        agg = M.aggregated_mdps(rng, batch, K, A, split)
        for _ in range(policies_per_mdp):
            abstract_pi = M.random_policies(rng, batch, K, A)
            abstract_q = M.q_values(agg.abstract, abstract_pi)
            ground_q = M.q_values(agg.ground, agg.lift(abstract_pi))
            policy_gap = max(policy_gap, float(np.abs(agg.lift(abstract_q) - ground_q).max()))
        abstract_q_star = M.value_iteration(agg.abstract)
        lifted_pi_star = agg.lift(M.greedy_policy(abstract_q_star))
        _, ground_q_star = M.policy_iteration(agg.ground)
        ground_v_star = ground_q_star.max(axis=-1)
        lifted_value = M.state_values(M.q_values(agg.ground, lifted_pi_star), lifted_pi_star)
        lifted_v_star = abstract_q_star.max(axis=-1)[:, agg.cluster]
        optimal_gap = max(optimal_gap, float(np.abs(lifted_value - ground_v_star).max()),
                          float(np.abs(lifted_v_star - ground_v_star).max()))
    worst = max(policy_gap, optimal_gap)
    tolerance = 1e-9
    detail = (f"{policies_per_mdp} policies per MDP: max |lifted Q^pi - Q^pi| {policy_gap:.1e}; "
              f"max |V of lifted abstract-optimal policy - V*| {optimal_gap:.1e}")
    return CheckResult("embedding_values", "max |gap|", worst, tolerance, "below", n_mdps, worst < tolerance,
                       detail)


def check_embedding_conditions_matter(
    rng: np.random.Generator, n_mdps: int, reward_shift: float = 0.5, margin: float = 1e-3
) -> CheckResult:
    """Breaking either condition makes Q^pi differ within an embedding cluster: no value function
    of the embedding equals it.

    Two breaks per MDP, each on ground state-action (s, a) = (0, 0) alone: its reward moved by
    reward_shift, or its next states all moved into the cluster whose abstract value V^pi is
    farthest from the value it expected to reach. Either changes Q^pi(0, 0) by roughly the size of
    the break, and the other ground state-actions of its embedding cluster by less. A transition
    break can only show when clusters differ in value, so here cluster k's abstract rewards lie in
    [k/K, (k+1)/K). The distance of ground Q^pi from the nearest function of the embedding must
    exceed `margin` for every MDP and break, and stay ~0 without a break.
    """
    intact, reward_broken, transition_broken = [], [], []
    for (K, A, split), batch in zip(_AGGREGATION_CASES, _split(n_mdps, len(_AGGREGATION_CASES))):
        abstract = M.random_mdps(rng, batch, K, A)
        levelled = M.FiniteMDPs(P=abstract.P, r=(np.arange(K)[:, None] + abstract.r) / K, gamma=abstract.gamma)
        agg = M.aggregated_mdps(rng, batch, K, A, split, abstract=levelled)
        abstract_pi = M.random_policies(rng, batch, K, A)
        ground_pi = agg.lift(abstract_pi)
        intact.append(_embedding_spread(agg, M.q_values(agg.ground, ground_pi)))

        r = agg.ground.r.copy()
        r[:, 0, 0] += reward_shift
        broken = M.FiniteMDPs(P=agg.ground.P, r=r, gamma=agg.ground.gamma)
        reward_broken.append(_embedding_spread(agg, M.q_values(broken, ground_pi)))

        abstract_v = M.state_values(M.q_values(agg.abstract, abstract_pi), abstract_pi)  # (B, K)
        P = agg.ground.P.copy()
        expected_v = (P[:, 0, 0].reshape(batch, K, split).sum(-1) * abstract_v).sum(-1, keepdims=True)
        target = np.abs(abstract_v - expected_v).argmax(axis=-1)  # (B,)
        P[:, 0, 0] = (agg.cluster[None, :] == target[:, None]) / split  # uniform over the target cluster
        broken = M.FiniteMDPs(P=P, r=agg.ground.r, gamma=agg.ground.gamma)
        transition_broken.append(_embedding_spread(agg, M.q_values(broken, ground_pi)))
    intact, reward_broken, transition_broken = map(np.concatenate, (intact, reward_broken, transition_broken))
    worst = float(min(reward_broken.min(), transition_broken.min()))
    detail = (
        f"unbroken max distance {intact.max():.1e}; "
        f"min (median) distance after a reward shift of {reward_shift}: "
        f"{reward_broken.min():.3g} ({np.median(reward_broken):.3g}); "
        f"after moving one state-action's next states, min (median) distance "
        f"{transition_broken.min():.3g} ({np.median(transition_broken):.3g})"
    )
    return CheckResult("embedding_conditions_matter", "min distance of Q^pi from embedding", worst, margin, "above",
                       n_mdps, worst > margin and intact.max() < 1e-9, detail)


def run_all(seed: int = 0, n_mdps: int = 200) -> list[CheckResult]:
    """Every check, each on n_mdps random MDPs, all drawn from one generator seeded with `seed`."""
    rng = np.random.default_rng(seed)
    return [
        check_td_fixed_point(rng, n_mdps),
        check_value_error_bound(rng, n_mdps),
        check_embedding_values(rng, n_mdps),
        check_embedding_conditions_matter(rng, n_mdps),
    ]
