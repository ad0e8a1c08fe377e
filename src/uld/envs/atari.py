"""Atari 2600 games through the Arcade Learning Environment (docs/algorithm.md, Protocols: Atari).

Protocol (ALE v5 settings, with the frame processing done here rather than inside ALE):
- sticky actions with probability 0.25, the game's minimal action set, ALE frameskip 1;
- action repeat 4 in this wrapper, rewards summed, stopping early when the episode ends;
- the observed frame is the pixel-wise max of the last two ALE frames, in ALE's grayscale,
  resized to 84x84 with area interpolation; observations stack the last 4 such frames, (4, 84, 84)
  uint8, with the first frame repeated at reset;
- no no-op starts, no life-loss terminals, no reward clipping;
- episodes are truncated after 108,000 frames (27,000 agent steps);
- the evaluation env replaces the agent's action by a uniformly random one with probability 0.001;
  the training env never does (docs/algorithm.md, difference 4).

ale-py and OpenCV are imported only when an env is made; they come with ``pip install "uld[atari]"``.
"""

from __future__ import annotations

import difflib
from typing import Any

import numpy as np

from uld.envs.base import Env, EnvSpec, FrameHistory
from uld.envs.protocol import Protocol
from uld.envs.registry import Domain, Normalization, register_domain
from uld.errors import UldError

ACTION_REPEAT = 4
"""ALE frames per agent step (docs/algorithm.md, Protocols: Atari protocol, action repeat 4 in the wrapper)."""

STICKY_ACTION_PROBABILITY = 0.25
"""Chance, per ALE frame, that the previous action is repeated instead of the new one (docs/algorithm.md, Protocols)."""

MAX_EPISODE_FRAMES = 108_000
"""ALE frames after which an episode is truncated (docs/algorithm.md, Protocols): 27,000 agent steps."""

EVAL_EPSILON = 0.001
"""Chance of a uniformly random action in the evaluation env (docs/algorithm.md, Protocols: Atari protocol)."""

FRAME_SIZE = 84
"""Side of the square frame the screen is resized to."""

HISTORY = 4
"""Frames per observation (docs/algorithm.md, Protocols: Atari protocol, 4-frame history)."""

INSTALL_HELP = 'pip install "uld[atari]" (ale-py and opencv-python-headless)'
"""What to run when the Atari dependencies are missing."""


def _import_atari():
    """(ale_py, cv2), or a UldError saying what to install."""
    try:
        import ale_py
        import cv2
    except ImportError as err:
        raise UldError(f"Atari envs need ale-py and OpenCV, which are not installed ({err}); {INSTALL_HELP}.") from err
    return ale_py, cv2


def atari_games() -> dict[str, str]:
    """Every game ALE ships a ROM for: uld name (ALE v5's, e.g. "MontezumaRevenge") -> ROM id."""
    _import_atari()
    from ale_py import roms
    from ale_py.registration import rom_id_to_name

    return {rom_id_to_name(rom): rom for rom in roms.get_all_rom_ids()}


class AtariEnv:
    """An ALE game behind uld's Env interface with the Atari protocol (see the module docstring).

    Args:
        game: the game's ALE v5 name, e.g. "Pong".
        rom_id: the ROM's id in ale_py.roms, e.g. "pong".
        seed: seeds ALE (sticky actions and everything else ALE draws) and sample_action.
        evaluation: True for the evaluation env, which takes random actions with probability 0.001.
        max_episode_frames: ALE frames per episode before truncation (default MAX_EPISODE_FRAMES,
            the protocol's 108,000).
    """

    def __init__(self, game: str, rom_id: str, seed: int, *, evaluation: bool = False,
                 max_episode_frames: int | None = None) -> None:
        ale_py, self._cv2 = _import_atari()
        if max_episode_frames is None:
            max_episode_frames = MAX_EPISODE_FRAMES
        from ale_py import roms

        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)  # before construction: no banner
        ale = ale_py.ALEInterface()
        ale.setInt("random_seed", seed % 2**31)  # ALE takes a signed 32-bit seed
        ale.setFloat("repeat_action_probability", STICKY_ACTION_PROBABILITY)
        ale.setInt("max_num_frames_per_episode", max_episode_frames)
        self._rom_path = roms.get_rom_path(rom_id)
        ale.loadROM(self._rom_path)  # settings take effect when the ROM is loaded
        self._ale = ale
        self._actions = ale.getMinimalActionSet()
        height, width = ale.getScreenDims()
        self._screens = np.zeros((2, height, width), dtype=np.uint8)  # the last two ALE frames, grayscale
        self._newest = 0
        self._epsilon = EVAL_EPSILON if evaluation else 0.0
        self._rng = np.random.default_rng(seed)
        self._history = FrameHistory(HISTORY, (1, FRAME_SIZE, FRAME_SIZE))
        self.spec = EnvSpec(
            name=f"atari:{game}",
            obs_shape=(HISTORY, FRAME_SIZE, FRAME_SIZE),
            action_dim=len(self._actions),
            discrete=True,
            max_episode_steps=max_episode_frames // ACTION_REPEAT,
            pixels=True,
            frame_history=HISTORY,
        )

    def _grab_screen(self) -> None:
        self._newest ^= 1
        self._ale.getScreenGrayscale(self._screens[self._newest])

    def _frame(self) -> np.ndarray:
        """Max over the last two ALE frames (sprites that flicker between frames), resized to 84x84."""
        pooled = np.maximum(self._screens[0], self._screens[1])
        resized = self._cv2.resize(pooled, (FRAME_SIZE, FRAME_SIZE), interpolation=self._cv2.INTER_AREA)
        return resized[None]

    def reset(self) -> np.ndarray:
        """Start an episode (no no-op starts); its first frame fills the whole history."""
        self._ale.reset_game()
        self._grab_screen()
        self._screens[self._newest ^ 1] = self._screens[self._newest]  # one frame so far: pool it with itself
        return self._history.reset(self._frame())

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply action index ``action`` for up to 4 ALE frames; return (obs, reward, terminated, truncated, info).

        ``terminated`` is the game's own end (all lives lost); ``truncated`` is the 108,000-frame cap.
        """
        action = int(action)
        if self._epsilon and self._rng.random() < self._epsilon:
            action = int(self._rng.integers(len(self._actions)))
        ale_action = self._actions[action]
        reward = 0.0
        for _ in range(ACTION_REPEAT):
            reward += self._ale.act(ale_action)
            self._grab_screen()
            if self._ale.game_over():  # the game ended or hit the frame cap: stop repeating
                break
        terminated = self._ale.game_over(with_truncation=False)
        truncated = not terminated and self._ale.game_truncated()
        info = {"lives": self._ale.lives(), "episode_frame_number": self._ale.getEpisodeFrameNumber()}
        return self._history.push(self._frame()), float(reward), terminated, truncated, info

    def sample_action(self) -> int:
        """A uniformly random action index from the generator seeded with the env's seed."""
        return int(self._rng.integers(len(self._actions)))

    def rng_state(self) -> dict[str, Any]:
        """ALE's state with its RNG (serialized to a uint8 array) and the env's own generator.

        ALE's RNG drives sticky actions; the env's generator drives sample_action and, in the
        evaluation env, the epsilon-random actions.
        """
        ale_state = self._ale.cloneState(include_rng=True).serialize()
        return {"ale": np.frombuffer(ale_state, dtype=np.uint8).copy(), "sample": self._rng.bit_generator.state}

    def reseed(self, seed: int) -> None:
        """Seed ALE (it reads its seed when the ROM is loaded) and the env's generator with ``seed``."""
        self._ale.setInt("random_seed", seed % 2**31)
        self._ale.loadROM(self._rom_path)
        self._rng = np.random.default_rng(seed)

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore what rng_state returned."""
        import ale_py

        self._ale.restoreState(ale_py.ALEState(np.asarray(state["ale"], dtype=np.uint8).tobytes()))
        self._rng.bit_generator.state = state["sample"]

    def render(self) -> np.ndarray:
        """The current screen as a (210, 160, 3) uint8 RGB array."""
        return self._ale.getScreenRGB()

    def close(self) -> None:
        """Nothing to release: ALE holds no files or windows."""


def make_atari_env(game: str, seed: int, *, evaluation: bool = False) -> AtariEnv:
    """Make the Atari game ``game`` (its ALE v5 name, e.g. "Pong") with the Atari protocol.

    Raises UldError when ale-py or OpenCV is missing, and, naming the closest games, when ``game``
    is not one ALE has a ROM for.
    """
    games = atari_games()
    if game not in games:
        by_lower = {name.lower(): name for name in games}
        close = difflib.get_close_matches(game.lower(), list(by_lower), n=3)
        hint = (f"did you mean {', '.join('atari:' + by_lower[c] for c in close)}?" if close
                else "see uld.envs.atari.atari_games().")
        raise UldError(f"Unknown Atari game '{game}'; {hint}")
    return AtariEnv(game, games[game], seed, evaluation=evaluation)


def _make(env_id: str, seed: int, evaluation: bool) -> Env:
    return make_atari_env(env_id, seed, evaluation=evaluation)


def human_normalized(game: str, score: float | np.ndarray) -> float | np.ndarray:
    """An Atari score with the game's random agent at 0 and the human tester at 1."""
    from uld.analysis.reference_scores import ATARI_RANDOM_HUMAN

    random, human = ATARI_RANDOM_HUMAN[game]
    return (np.asarray(score) - random) / (human - random)


def _normalization(ids: list[str]) -> Normalization | None:
    """Human-normalized when every game has reference scores."""
    from uld.analysis.reference_scores import ATARI_RANDOM_HUMAN

    if not all(game in ATARI_RANDOM_HUMAN for game in ids):
        return None
    return Normalization("human-normalized score", True,
                         lambda env, returns: human_normalized(env.partition(":")[2], returns))


register_domain(Domain(
    prefix="atari", make=_make, protocol=Protocol(steps=2_500_000, eval_every=100_000, eval_episodes=10),
    title="Atari", example="atari:Pong", names=lambda: list(atari_games()), reference_prefix="Atari-",
    reference_suffix="-v5", normalization=_normalization,
))
