"""uld.theory: hand-computed tiny MDPs, then every check's numbers on random MDPs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uld.theory import checks as C
from uld.theory import mdp as M
from uld.theory import report


def two_state_chain(gamma: float = 0.5) -> M.FiniteMDPs:
    """One action; state 0 -> 1 surely, state 1 -> 0 or 1 evenly; rewards 1 and 2."""
    P = np.array([[[[0.0, 1.0]], [[0.5, 0.5]]]])  # (1, S=2, A=1, S=2)
    r = np.array([[[1.0], [2.0]]])
    return M.FiniteMDPs(P=P, r=r, gamma=gamma)


ONE_ACTION = np.ones((1, 2, 1))


# Hand-computed tabular quantities -------------------------------------------------------------


def test_q_values_of_two_state_chain_by_hand():
    # Q0 = 1 + Q1/2, Q1 = 2 + (Q0 + Q1)/4  =>  Q0 = 14/5, Q1 = 18/5
    q = M.q_values(two_state_chain(), ONE_ACTION)
    np.testing.assert_allclose(q[0, :, 0], [2.8, 3.6], atol=1e-12)


def test_q_values_of_single_absorbing_state_is_reward_over_one_minus_gamma():
    mdp = M.FiniteMDPs(P=np.ones((1, 1, 1, 1)), r=np.array([[[3.0]]]), gamma=0.9)
    np.testing.assert_allclose(M.q_values(mdp, np.ones((1, 1, 1))), [[[30.0]]], atol=1e-12)


def test_state_action_transition_weights_next_state_by_policy():
    P = np.zeros((1, 2, 2, 2))
    P[0, :, :, 1] = 1.0  # every state-action goes to state 1
    pi = np.array([[[0.5, 0.5], [0.25, 0.75]]])
    mdp = M.FiniteMDPs(P=P, r=np.zeros((1, 2, 2)), gamma=0.9)
    P_pi = M.state_action_transition(mdp, pi)
    # rows (s, a) in order (0,0), (0,1), (1,0), (1,1); all go to (1, a') with pi(a' | 1)
    np.testing.assert_allclose(P_pi[0], np.tile([0.0, 0.0, 0.25, 0.75], (4, 1)))
    Z = np.arange(8.0).reshape(1, 4, 2)
    np.testing.assert_allclose(M.next_features(mdp, pi, Z)[0], np.tile(0.25 * Z[0, 2] + 0.75 * Z[0, 3], (4, 1)))


def test_stationary_distribution_of_two_state_chain():
    # xi0 = xi1 / 2 and xi0 + xi1 = 1
    P_pi = np.array([[[0.0, 1.0], [0.5, 0.5]]])
    np.testing.assert_allclose(M.stationary_distribution(P_pi), [[1 / 3, 2 / 3]], atol=1e-12)


def test_policy_iteration_and_value_iteration_agree_on_random_mdps():
    mdps = M.random_mdps(np.random.default_rng(3), 20, 5, 3, gamma=0.9)
    _, q_pi = M.policy_iteration(mdps)
    np.testing.assert_allclose(M.value_iteration(mdps), q_pi, atol=1e-11)


# Hand-computed linear cases ---------------------------------------------------------------------


def test_constant_feature_on_two_state_chain_by_hand():
    # z = 1 everywhere: w_r = mean reward 1.5, Z' = Z so W_d = 1, w = 1.5 / (1 - 0.5) = 3
    mdp = two_state_chain(gamma=0.5)
    Z = np.ones((1, 2, 1))
    Z_next = M.next_features(mdp, ONE_ACTION, Z)
    r = mdp.r.reshape(1, 2)
    uniform = np.full((1, 2), 0.5)
    w_r, W_d = C.linear_model(Z, Z_next, r, uniform)
    np.testing.assert_allclose([w_r[0, 0], W_d[0, 0, 0]], [1.5, 1.0], atol=1e-12)
    w = C.model_based_weights(w_r, W_d, mdp.gamma)
    np.testing.assert_allclose(w, [[3.0]], atol=1e-12)
    np.testing.assert_allclose(C.td_fixed_point(Z, Z_next, r, uniform, mdp.gamma), [[3.0]], atol=1e-12)
    # error max |3 - (2.8, 3.6)| = 0.6; reward errors (0.5, -0.5), no dynamics error: bound 0.5 / 0.5 = 1
    bound, tighter = C.value_error_bound(Z, Z_next, r, w_r, W_d, w, mdp.gamma)
    np.testing.assert_allclose([bound[0], tighter[0]], [1.0, 1.0], atol=1e-12)


def w_2w_counterexample(gamma: float = 0.9):
    """Two states with features 1 and 2, one action, both moving to state 1 (reward 1 there only)."""
    P = np.zeros((1, 2, 1, 2))
    P[0, :, 0, 1] = 1.0
    mdp = M.FiniteMDPs(P=P, r=np.array([[[0.0], [1.0]]]), gamma=gamma)
    Z = np.array([[[1.0], [2.0]]])
    return mdp, Z, M.next_features(mdp, np.ones((1, 2, 1)), Z), mdp.r.reshape(1, 2)


def test_uniform_weight_td_diverges_but_its_fixed_point_still_equals_the_model_based_one():
    mdp, Z, Z_next, r = w_2w_counterexample()
    uniform = np.full((1, 2), 0.5)
    # A = (1 (0.9*2 - 1) + 2 (0.9*2 - 2)) / 2 = 0.2 > 0: expected TD moves away from its fixed point
    _, stable, converged = C.td_iterate(Z, Z_next, r, uniform, mdp.gamma, max_iters=100)
    assert not stable[0] and not converged[0]
    # W_d = (1*2 + 2*2) / 5 = 1.2, so gamma W_d = 1.08 and the rollout diverges too
    w_r, W_d = C.linear_model(Z, Z_next, r, uniform)
    np.testing.assert_allclose([w_r[0, 0], W_d[0, 0, 0]], [0.4, 1.2], atol=1e-12)
    _, rolled = C.rollout_weights(w_r, W_d, mdp.gamma)
    assert not rolled[0]
    # yet both closed forms agree: 0.4 / (1 - 1.08) = 2 / (5 - 0.9 * 6) = -5
    np.testing.assert_allclose(C.model_based_weights(w_r, W_d, mdp.gamma), [[-5.0]], atol=1e-12)
    np.testing.assert_allclose(C.td_fixed_point(Z, Z_next, r, uniform, mdp.gamma), [[-5.0]], atol=1e-12)


def test_on_policy_td_converges_on_the_counterexample():
    mdp, Z, Z_next, r = w_2w_counterexample()
    xi = M.stationary_distribution(M.state_action_transition(mdp, np.ones((1, 2, 1))))
    np.testing.assert_allclose(xi, [[0.0, 1.0]], atol=1e-12)
    # only state 1 counts: w = 2 * 1 / (2 * (2 - 0.9 * 2)) = 5, and z_1 w = 10 = Q(1) = 1 / (1 - 0.9)
    w, stable, converged = C.td_iterate(Z, Z_next, r, xi, mdp.gamma)
    assert stable[0] and converged[0]
    np.testing.assert_allclose(w, [[5.0]], atol=1e-10)
    w_roll, rolled = C.rollout_weights(*C.linear_model(Z, Z_next, r, xi), mdp.gamma)
    assert rolled[0]
    np.testing.assert_allclose(w_roll, [[5.0]], atol=1e-12)


# The aggregated construction --------------------------------------------------------------------


def test_aggregated_mdps_preserve_reward_and_cluster_transitions_but_not_ground_transitions():
    agg = M.aggregated_mdps(np.random.default_rng(1), batch=4, n_clusters=3, n_actions=2, split=2)
    np.testing.assert_array_equal(agg.cluster, [0, 0, 1, 1, 2, 2])
    np.testing.assert_allclose(agg.ground.r, agg.lift(agg.abstract.r))
    cluster_probs = agg.ground.P.reshape(4, 6, 2, 3, 2).sum(-1)  # (B, S, A, K)
    b = np.arange(4)[:, None, None]
    np.testing.assert_allclose(cluster_probs, agg.abstract.P[b, agg.cluster[None, :, None], agg.action_map])
    # the two ground states of cluster 0 under the same abstract action reach ground states differently
    same_abstract_action = np.argsort(agg.action_map[:, :2], axis=-1)  # ground action per abstract action
    first = np.take_along_axis(agg.ground.P[:, 0], same_abstract_action[:, 0, :, None], axis=1)
    second = np.take_along_axis(agg.ground.P[:, 1], same_abstract_action[:, 1, :, None], axis=1)
    assert np.abs(first - second).max() > 0.01


def test_lift_and_by_embedding_are_inverse_on_embedding_functions():
    agg = M.aggregated_mdps(np.random.default_rng(2), batch=2, n_clusters=2, n_actions=3, split=2)
    abstract_q = np.arange(12.0).reshape(2, 2, 3)
    grouped = agg.by_embedding(agg.lift(abstract_q))  # (B, K, split, A)
    np.testing.assert_array_equal(grouped, np.repeat(abstract_q[:, :, None, :], 2, axis=2))


# Every check's numbers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def results() -> dict[str, C.CheckResult]:
    return {result.name: result for result in C.run_all(seed=0, n_mdps=200)}


def test_td_fixed_point_equals_model_based_solution(results):
    result = results["td_fixed_point"]
    assert result.n_mdps == 200 and result.passed
    assert result.worst < 1e-8
    assert "on-policy weights: TD stable 200/200" in result.detail
    assert "rollout converged 200/200" in result.detail.split("on-policy")[1]


def test_value_error_bound_holds_on_200_mdps(results):
    result = results["value_error_bound"]
    assert result.n_mdps == 200 and result.passed
    assert result.worst >= -1e-9


def test_embedding_values_match_ground_values(results):
    result = results["embedding_values"]
    assert result.passed and result.worst < 1e-9


def test_broken_embedding_conditions_leave_a_clear_gap(results):
    result = results["embedding_conditions_matter"]
    assert result.passed and result.worst > 1e-3


def test_run_all_is_deterministic_given_the_seed():
    first, again, other = C.run_all(seed=5, n_mdps=20), C.run_all(seed=5, n_mdps=20), C.run_all(seed=6, n_mdps=20)
    assert first == again
    assert [r.worst for r in first] != [r.worst for r in other]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_value_error_bound_holds_for_any_seed(seed):
    result = C.check_value_error_bound(np.random.default_rng(seed), n_mdps=16)
    assert result.worst >= -1e-9, result


# Report -------------------------------------------------------------------------------------------


def test_format_table_has_one_row_per_check(results):
    table = report.format_table(list(results.values()))
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["check", "MDPs"]
    for name in results:
        row = next(line for line in lines if line.startswith(name + " "))
        assert row.split()[1] == "200" and row.endswith("pass")


def test_main_returns_zero_when_all_pass_and_one_when_any_fails(monkeypatch, capsys):
    assert report.main(["--n-mdps", "20"]) == 0
    assert "td_fixed_point" in capsys.readouterr().out
    failing = C.CheckResult("made_up", "max |gap|", 1.0, 1e-9, "below", 1, False)
    monkeypatch.setattr(report, "run_all", lambda seed, n_mdps: [failing])
    assert report.main([]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_uld_theory_command_prints_every_check_passing_and_exits_zero():
    """`uld theory` as a user runs it, in a fresh interpreter: one row per check over the MDPs asked for, all
    passing, exit status 0; `python -m uld.theory` is the same command; a bad option exits with status 2."""
    import subprocess
    import sys

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], capture_output=True, text=True)

    result = run("-m", "uld.cli", "theory", "--n-mdps", "12", "--seed", "4")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:] if line.strip()
            and not line.startswith(" ") and not line.endswith(":")}
    assert set(rows) == {"td_fixed_point", "value_error_bound", "embedding_values", "embedding_conditions_matter"}
    assert all(row[1] == "12" and row[-1] == "pass" for row in rows.values()), rows
    assert run("-m", "uld.theory", "--n-mdps", "12", "--seed", "4").stdout == result.stdout
    assert run("-m", "uld.cli", "theory", "--n-mdps", "many").returncode == 2
