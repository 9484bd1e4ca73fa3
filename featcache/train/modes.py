"""The training modes as data: where a mode's features come from, which encoder, and whether it trains.

Every sweep, benchmark and report reads this one table instead of testing mode names. A mode whose ``blocks``
is set takes k, the number of the encoder's last blocks it trains, as part of its name: ``T2`` is mode ``T`` with
k = 2 (`parse_mode`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from featcache.core.errors import OptionError


@dataclass(frozen=True)
class Mode:
    """One mode of `compare-e2e`.

    ``source``: ``store`` (features read from the feature store; no encoder runs), ``encoder`` (an
    encoder runs on the store's images at every step) or ``tokens`` (the encoder's last blocks run on the
    store's cached tokens). ``encoder``: for encoder modes, ``ssl`` (the
    self-supervised encoder the store was extracted with) or ``init`` (the weights it started from,
    `--e-init`). ``trainable``: the encoder (with ``blocks``: its last k blocks) is trained with the decoder.
    ``description``: the mode in words, ``{encoder}`` standing for the words of the encoder it uses and ``{k}``
    for k (`describe`).
    """

    name: str
    source: str
    encoder: str | None
    trainable: bool
    description: str
    blocks: bool = False

    @property
    def reads_store(self) -> bool:
        return self.source == "store"

    def describe(self, encoder: str, k: int = 0) -> str:
        """The mode in words, with ``encoder`` (`featcache.models.naming.encoder_words` of the encoder it runs,
        or for a store mode of the store's) and ``k`` in place: what the report and tables say of it."""
        return self.description.format(encoder=encoder, k=k)


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("E", "encoder", "init", True, "{encoder} trained end to end with the decoder (the study's E: --e-init)"),
        Mode("Es", "encoder", "ssl", True, "{encoder} trained end to end with the decoder (the store's encoder)"),
        Mode("F", "encoder", "ssl", False, "{encoder} frozen, recomputed at every step (the study's F)"),
        Mode("FI", "encoder", "init", False, "{encoder} frozen, recomputed at every step (--e-init)"),
        Mode("C", "store", None, False, "decoder trained from the feature store of the {encoder}: no encoder runs"),
        Mode(
            "T",
            "tokens",
            "ssl",
            True,
            "last {k} block(s) and final norm of the {encoder} trained with the decoder from the store's cached "
            "tokens; the blocks below never run",
            blocks=True,
        ),
        Mode(
            "P",
            "encoder",
            "ssl",
            True,
            "last {k} block(s) and final norm of the {encoder} trained with the decoder, recomputed from the images "
            "at every step, the blocks below frozen (what T{k} saves)",
            blocks=True,
        ),
    )
}

_NAME = re.compile(r"^([A-Za-z]+?)(\d*)$")


def parse_mode(name: str) -> tuple[Mode, int]:
    """A mode's name -> its `Mode` and k, the encoder blocks it trains (0 for a mode without ``blocks``): ``T2`` ->
    (``MODES["T"]``, 2), ``C`` -> (``MODES["C"]``, 0). Refuses, as a usage error, names that are not modes."""
    match = _NAME.match(name)
    mode = MODES.get(match.group(1)) if match else None
    k = match.group(2) if match else ""
    if mode is not None and not mode.blocks and not k:
        return mode, 0
    if mode is not None and mode.blocks and k and int(k) >= 1:
        return mode, int(k)
    if mode is not None and mode.blocks and k:
        same = "C (the stored features)" if mode.name == "T" else "F (the frozen encoder, recomputed)"
        raise OptionError(f"mode {name}: zero trained blocks is mode {same}; write {same[0]}")
    plain = ", ".join(m.name for m in MODES.values() if not m.blocks)
    raise OptionError(
        f"unknown mode {name!r}; choose from {plain}, or Tk / Pk with k >= 1 (the encoder's last k blocks trained)"
    )


def mode_of(name: str) -> Mode:
    """The `Mode` of a mode's name (``T2`` -> mode T)."""
    return parse_mode(name)[0]


def train_blocks_of(name: str) -> int:
    """k of a mode's name: the encoder's last blocks it trains (``T2`` -> 2; 0 for C, F, E, ...)."""
    return parse_mode(name)[1]


def describe(name: str, encoder: str) -> str:
    """The mode ``name`` (``T2``, ``C``, ...) in words (`Mode.describe`), its k and ``encoder`` filled in."""
    mode, k = parse_mode(name)
    return mode.describe(encoder, k)
