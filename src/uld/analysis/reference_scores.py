"""Reference scores that turn raw returns into normalized scores (docs/benchmarks.md, "Normalizations").

Atari: the random-agent and professional-human-tester scores of the 57 games, as published with DQN
(Mnih et al., Nature 2015, for 49 games) and completed to 57 games by later work (Wang et al. 2016;
Badia et al., "Agent57", ICML 2020); the same numbers ship with DeepMind's DQN Zoo. A human-normalized
score is (score - random) / (human - random): 0 plays like a random agent, 1 like the human tester.

Gym: the random-policy and TD3 scores (TD3 after 1M steps, Gymnasium MuJoCo -v4) that MR.Q
(Fujimoto et al., ICLR 2025, Appendix on Gym) normalizes by, taken there from TD7 (Fujimoto et al.,
NeurIPS 2023). A TD3-normalized score is (score - random) / (TD3 - random).
"""

from __future__ import annotations

ATARI_RANDOM_HUMAN: dict[str, tuple[float, float]] = {
    "Alien": (227.8, 7127.7),
    "Amidar": (5.8, 1719.5),
    "Assault": (222.4, 742.0),
    "Asterix": (210.0, 8503.3),
    "Asteroids": (719.1, 47388.7),
    "Atlantis": (12850.0, 29028.1),
    "BankHeist": (14.2, 753.1),
    "BattleZone": (2360.0, 37187.5),
    "BeamRider": (363.9, 16926.5),
    "Berzerk": (123.7, 2630.4),
    "Bowling": (23.1, 160.7),
    "Boxing": (0.1, 12.1),
    "Breakout": (1.7, 30.5),
    "Centipede": (2090.9, 12017.0),
    "ChopperCommand": (811.0, 7387.8),
    "CrazyClimber": (10780.5, 35829.4),
    "Defender": (2874.5, 18688.9),
    "DemonAttack": (152.1, 1971.0),
    "DoubleDunk": (-18.6, -16.4),
    "Enduro": (0.0, 860.5),
    "FishingDerby": (-91.7, -38.7),
    "Freeway": (0.0, 29.6),
    "Frostbite": (65.2, 4334.7),
    "Gopher": (257.6, 2412.5),
    "Gravitar": (173.0, 3351.4),
    "Hero": (1027.0, 30826.4),
    "IceHockey": (-11.2, 0.9),
    "Jamesbond": (29.0, 302.8),
    "Kangaroo": (52.0, 3035.0),
    "Krull": (1598.0, 2665.5),
    "KungFuMaster": (258.5, 22736.3),
    "MontezumaRevenge": (0.0, 4753.3),
    "MsPacman": (307.3, 6951.6),
    "NameThisGame": (2292.3, 8049.0),
    "Phoenix": (761.4, 7242.6),
    "Pitfall": (-229.4, 6463.7),
    "Pong": (-20.7, 14.6),
    "PrivateEye": (24.9, 69571.3),
    "Qbert": (163.9, 13455.0),
    "Riverraid": (1338.5, 17118.0),
    "RoadRunner": (11.5, 7845.0),
    "Robotank": (2.2, 11.9),
    "Seaquest": (68.4, 42054.7),
    "Skiing": (-17098.1, -4336.9),
    "Solaris": (1236.3, 12326.7),
    "SpaceInvaders": (148.0, 1668.7),
    "StarGunner": (664.0, 10250.0),
    "Surround": (-10.0, 6.5),
    "Tennis": (-23.8, -8.3),
    "TimePilot": (3568.0, 5229.2),
    "Tutankham": (11.4, 167.6),
    "UpNDown": (533.4, 11693.2),
    "Venture": (0.0, 1187.5),
    "VideoPinball": (16256.9, 17667.9),
    "WizardOfWor": (563.5, 4756.5),
    "YarsRevenge": (3092.9, 54576.9),
    "Zaxxon": (32.5, 9173.3),
}
"""ALE v5 game name -> (random score, human score), the 57 games of the Atari benchmark."""

GYM_RANDOM_TD3: dict[str, tuple[float, float]] = {
    "Ant": (-70.288, 3942.0),
    "HalfCheetah": (-289.415, 10574.0),
    "Hopper": (18.791, 3226.0),
    "Humanoid": (120.423, 5165.0),
    "Walker2d": (2.791, 3946.0),
}
"""Gymnasium MuJoCo task (without its -vN) -> (random score, TD3 score at 1M steps), measured on -v4."""
