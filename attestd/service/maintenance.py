"""Database upkeep outside the request path: expired transport keys and retention.

Nothing here runs inside ``/launch`` or ``/validate``; ``attestd db maintain``
(for instance from the systemd timer in ``examples/service``) calls
:meth:`Upkeep.run`. Deletes go in batches, each its own short transaction, so a
large backlog never holds the database for long.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from attestd.config import Settings
from attestd.service.clock import Clock
from attestd.storage.ports import Maintenance

logger = logging.getLogger(__name__)

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class UpkeepReport:
    """What one maintenance run did."""

    purged_keys: int
    deleted_launches: int
    deleted_events: int


class Upkeep:
    """Purge expired TEK/TIK; delete launches and events past their retention."""

    def __init__(self, settings: Settings, repo: Maintenance, *, clock: Clock) -> None:
        self.settings = settings
        self.repo = repo
        self.clock = clock

    def run(self, *, batch: int = 1000) -> UpkeepReport:
        """One maintenance pass (idempotent; safe next to running services)."""
        now = self.clock()
        purged = self.repo.purge_expired_keys(now)
        launches = events = 0
        if self.settings.retention_launch_days:
            before = now - self.settings.retention_launch_days * DAY
            launches = _drain(lambda: self.repo.delete_old_launches(before, batch=batch), batch)
        if self.settings.retention_event_days:
            before = now - self.settings.retention_event_days * DAY
            events = _drain(lambda: self.repo.delete_old_events(before, batch=batch), batch)
        logger.info(
            "maintenance: purged keys of %d expired launches, deleted %d launches and %d events",
            purged,
            launches,
            events,
        )
        return UpkeepReport(purged, launches, events)


def _drain(step: Callable[[], int], batch: int) -> int:
    total = 0
    while True:
        done = step()
        total += done
        if done < batch:
            return total
