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
    `--e-init`). ``trainable``: the encoder is trained end to end with the decoder.
    """

    name: str
    source: str
    encoder: str | None
    trainable: bool
    description: str

    @property
    def reads_store(self) -> bool:
        return self.source == "store"


MODES: dict[str, Mode] = {
    m.name: m
    for m in (
        Mode(
            "E",
            "encoder",
            "init",
            True,
            "encoder and decoder trained end to end, the encoder starting from the "
            "weights the self-supervised encoder started from (the study's E)",
        ),
        Mode("Es", "encoder", "ssl", True, "end to end, starting from the self-supervised encoder"),
        Mode(
            "F", "encoder", "ssl", False, "self-supervised encoder frozen and recomputed at every step (the study's F)"
        ),
        Mode(
            "FI",
            "encoder",
            "init",
            False,
            "the starting (ImageNet in the study's setting) encoder frozen and recomputed at every step",
        ),
        Mode(
            "C",
            "store",
            None,
            False,
            "decoder trained from the feature store: no encoder runs during training (featcache)",
        ),
    )
}
