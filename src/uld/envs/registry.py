"""Env domains by prefix: what make_env, the protocols, the suites and the reports need to know about one.

A domain module (gym.py, dmc.py, atari.py, python.py) registers a ``Domain`` for each prefix it serves;
``make_env("<prefix>:<id>", seed)`` then makes its envs, and its protocol, reference-curve names,
score normalization and report title come from that one entry. The built-in domains are registered
the first time the registry is read, and so are the modules installed packages declare under the
entry-point group ``uld.envs``; their libraries are imported only when an env is made.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from uld.plugins import load_plugins

if TYPE_CHECKING:  # protocol_for reads this registry: importing protocol.py here would close a cycle
    from uld.envs.base import Env
    from uld.envs.protocol import Protocol

BUILTIN_DOMAINS = ("uld.envs.gym", "uld.envs.dmc", "uld.envs.atari", "uld.envs.python")
"""Modules whose import registers the domains that ship with uld, in the order they are listed."""


@dataclass(frozen=True)
class Normalization:
    """How the raw returns of a group of envs of one domain become comparable scores."""

    name: str
    """What the scores are, for axis labels and tables."""
    bounded: bool
    """Whether 1 means "solved" or "as good as the reference", which the optimality gap needs."""
    score: Callable[[str, np.ndarray], np.ndarray]
    """(uld env name, raw returns) -> normalized scores."""


@dataclass(frozen=True)
class Domain:
    """One family of envs named ``<prefix>:<id>``."""

    prefix: str
    """The part of an env name before the first ":" (e.g. "dmc-pixels")."""
    make: Callable[[str, int, bool], Env]
    """(id, seed, evaluation) -> the env; UldError, naming close ids, for an unknown id."""
    protocol: Protocol
    """The reference budget and evaluation cadence of the domain's envs."""
    title: str
    """The domain's name in reports (e.g. "DMC visual")."""
    example: str
    """One env name, for messages (e.g. "dmc-pixels:walker-walk")."""
    names: Callable[[], Sequence[str]] | None = None
    """Every id the domain knows, for suggestions (may import the domain's library; may raise UldError)."""
    reference_prefix: str | None = None
    """Prefix of the domain's envs in the published result files (e.g. "Dmc-visual-"); None: not published."""
    reference_suffix: str = ""
    """Suffix of those names (Atari's "-v5")."""
    normalization: Callable[[list[str]], Normalization | None] | None = None
    """ids -> how to normalize their returns (None when these ids have no reference scores: raw returns)."""

    def reference_name(self, env_id: str) -> str | None:
        """The name of ``<prefix>:<env_id>`` in the published result files, or None when it has none."""
        if self.reference_prefix is None:
            return None
        return f"{self.reference_prefix}{env_id}{self.reference_suffix}"


_DOMAINS: dict[str, Domain] = {}
_builtins_loaded = False


def register_domain(domain: Domain) -> Domain:
    """Make ``<domain.prefix>:<id>`` names known to make_env, the protocols and the reports."""
    _registry()
    _DOMAINS[domain.prefix] = domain
    # Built-in modules register in whatever order imports run; list them in BUILTIN_DOMAINS's, then the rest.
    rank = {module: i for i, module in enumerate(BUILTIN_DOMAINS)}
    ordered = sorted(_DOMAINS.values(), key=lambda known: rank.get(known.make.__module__, len(rank)))
    _DOMAINS.clear()
    _DOMAINS.update((known.prefix, known) for known in ordered)
    return domain


def _registry() -> dict[str, Domain]:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in BUILTIN_DOMAINS:
            importlib.import_module(module)
        load_plugins("uld.envs")
    return _DOMAINS


def domains() -> list[Domain]:
    """The registered domains."""
    return list(_registry().values())


def split_env_name(env_name: str) -> tuple[str, str]:
    """(prefix, id) of a uld env name: "dmc:cheetah-run" -> ("dmc", "cheetah-run")."""
    prefix, _, env_id = env_name.partition(":")
    return prefix, env_id


def find_domain(env_name: str) -> Domain | None:
    """The domain of a uld env name, or None when its prefix is not registered."""
    prefix, env_id = split_env_name(env_name)
    return _registry().get(prefix) if env_id else None


def get_domain(prefix: str) -> Domain:
    """The domain registered under ``prefix`` (KeyError otherwise)."""
    return _registry()[prefix]


def domain_from_reference_name(name: str) -> tuple[Domain, str] | None:
    """(domain, id) of a name in the published result files; the longest matching prefix wins."""
    matches = [(domain, name[len(domain.reference_prefix):len(name) - len(domain.reference_suffix)])
               for domain in _registry().values()
               if domain.reference_prefix and name.startswith(domain.reference_prefix)
               and name.endswith(domain.reference_suffix)]
    if not matches:
        return None
    return max(matches, key=lambda match: len(match[0].reference_prefix or ""))
