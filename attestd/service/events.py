"""The owner's audit trail of one VM (registrations, launches, validations)."""

from __future__ import annotations

from attestd.errors import NotFound
from attestd.storage.ports import EventLog, EventRecord, Principal, VmRepository


class Events:
    """Read the audit trail; writers append :class:`~attestd.storage.ports.Event` values."""

    def __init__(self, log: EventLog, vms: VmRepository) -> None:
        self.log = log
        self.vms = vms

    def list(
        self, owner: Principal, uuid: str, *, after: int = 0, limit: int = 100
    ) -> list[EventRecord]:
        """The audit trail of one of the owner's VMs (also after it was deleted)."""
        found = self.log.events(owner.id, uuid, after=after, limit=limit)
        if not found and after == 0:
            if self.vms.vm(owner.id, uuid) is None:
                raise NotFound(f"no VM {uuid}", reasons=["unknown_vm"])
        return found
