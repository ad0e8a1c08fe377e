"""MBPO's truncated-observation Ant and Humanoid on Gymnasium v5 (docs/alm.md, Environments).

Importing this module registers, once, with Gymnasium:
- ``AntTruncatedObs-v5``: Ant-v5 without the contact forces (27-d observation).
- ``HumanoidTruncatedObs-v5``: Humanoid-v5 without cinert, cvel, qfrc_actuator and cfrc_ext (45-d).
Everything else (entry point, time limit, reward threshold) is the base env's registration.
"""

from __future__ import annotations

import gymnasium

TRUNCATED_ENVS: dict[str, tuple[str, dict[str, bool]]] = {
    "AntTruncatedObs-v5": ("Ant-v5", {"include_cfrc_ext_in_observation": False}),
    "HumanoidTruncatedObs-v5": (
        "Humanoid-v5",
        {
            "include_cinert_in_observation": False,
            "include_cvel_in_observation": False,
            "include_qfrc_actuator_in_observation": False,
            "include_cfrc_ext_in_observation": False,
        },
    ),
}
"""New id -> (base id, observation flags passed to the base env)."""


def register_truncated_envs() -> None:
    """Register every id of TRUNCATED_ENVS that Gymnasium does not know yet."""
    for env_id, (base_id, flags) in TRUNCATED_ENVS.items():
        if env_id in gymnasium.registry:
            continue
        base = gymnasium.spec(base_id)
        gymnasium.register(
            id=env_id,
            entry_point=base.entry_point,
            reward_threshold=base.reward_threshold,
            max_episode_steps=base.max_episode_steps,
            kwargs={**base.kwargs, **flags},
        )


register_truncated_envs()
