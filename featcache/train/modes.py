"""The training modes as data: where a mode's features come from, which encoder, and whether it trains.

Every sweep, benchmark and report reads this one table instead of testing mode names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    """One mode of `compare-e2e`.

    ``source``: ``store`` (features read from the feature store; no encoder runs) or ``encoder`` (an
    encoder runs on the store's images at every step). ``encoder``: for encoder modes, ``ssl`` (the
    self-supervised encoder the store was extracted with) or ``init`` (the weights it started from,
    `--e-init`). ``trainable``: the encoder is trained end to end with the decoder. ``description``: the mode
    in words, ``{encoder}`` standing for the words of the encoder it uses (`describe`).
    """

    name: str
    source: str
    encoder: str | None
    trainable: bool
    description: str

    @property
    def reads_store(self) -> bool:
        return self.source == "store"

    def describe(self, encoder: str) -> str:
        """The mode in words, with ``encoder`` (`featcache.models.naming.encoder_words` of the encoder it runs,
        or for a store mode of the store's) in place: what the report and tables say of it."""
        return self.description.format(encoder=encoder)


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode("E", "encoder", "init", True, "{encoder} trained end to end with the decoder (the study's E: --e-init)"),
        Mode("Es", "encoder", "ssl", True, "{encoder} trained end to end with the decoder (the store's encoder)"),
        Mode("F", "encoder", "ssl", False, "{encoder} frozen, recomputed at every step (the study's F)"),
        Mode("FI", "encoder", "init", False, "{encoder} frozen, recomputed at every step (--e-init)"),
        Mode("C", "store", None, False, "decoder trained from the feature store of the {encoder}: no encoder runs"),
    )
}
