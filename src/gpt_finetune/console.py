"""What a run prints: Lightning without its advert and the warnings no setting of ours can act on."""

from __future__ import annotations

import logging
import warnings

log = logging.getLogger(__name__)
ADVERT = (
    "💡 Tip:"  # Lightning's "try installing litlogger" line, printed by every Trainer without a LitLogger
)


def drop_advert(record: logging.LogRecord) -> bool:
    """A logging filter: False for Lightning's advert, True for every other record."""
    return not str(record.msg).startswith(ADVERT)


def quiet_lightning() -> None:
    """Drop Lightning's advert and its warnings that no setting of ours can act on; idempotent.

    Lightning logs the advert through its rank-zero logger, which also carries lines that matter (GPU
    available, `max_steps` reached): only the advert is dropped. Lightning 2.6's own `_pytree` builds a
    `LeafSpec`, which torch 2.13 deprecates with a FutureWarning on every fit; only that one is ignored.
    """
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if drop_advert not in rank_zero.filters:
        rank_zero.addFilter(drop_advert)
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
