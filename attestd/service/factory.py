"""The one place that wires settings, storage, key ring and clock into the use-cases.

``attestd.api.create_app`` and every CLI command call :func:`build_services`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from attestd.config import Settings
from attestd.service.attestations import Attestations
from attestd.service.clock import Clock
from attestd.service.events import Events
from attestd.service.firmware import Firmware
from attestd.service.initdata import VmInitdata
from attestd.service.launches import Launches
from attestd.service.maintenance import Upkeep
from attestd.service.owners import Principals
from attestd.service.vms import Vms
from attestd.storage import open_store
from attestd.storage.keys import KeyRing
from attestd.storage.ports import Store


def open_keyring(settings: Settings) -> KeyRing:
    """The storage key ring; a development key is generated only when none is configured."""
    path = settings.effective_storage_key_file
    if settings.storage_key_file is None and path == settings.data_dir / "storage.key":
        return KeyRing.load_or_create(path)
    return KeyRing.from_file(path)


@dataclass
class Services:
    """Every use-case of one service instance, sharing one store, key ring and clock."""

    settings: Settings
    store: Store
    keyring: KeyRing
    clock: Clock
    principals: Principals
    vms: Vms
    firmware: Firmware
    events: Events
    launches: Launches
    upkeep: Upkeep
    attestations: Attestations
    initdata: VmInitdata

    def configure(self, settings: Settings) -> None:
        """Use changed settings from now on (tests and reloads)."""
        self.settings = settings
        self.vms.settings = settings
        self.launches.settings = settings
        self.upkeep.settings = settings
        self.firmware.settings = settings
        self.attestations.settings = settings
        self.initdata.settings = settings
        self.principals.require_host_token = settings.require_host_token


def build_services(
    settings: Settings, *, clock: Clock = time.time, migrate: bool | None = None
) -> Services:
    """The use-cases over the database and key ring of ``settings``.

    The schema is upgraded when ``migrate`` is true (default: ``settings.auto_migrate``).
    """
    store = open_store(settings)
    if settings.auto_migrate if migrate is None else migrate:
        store.upgrade()
    keyring = open_keyring(settings)
    initdata = VmInitdata(settings, store, clock=clock)
    initdata.trust()  # a guest_ca_file that cannot be read stops the start, not a request
    vms = Vms(settings, store, store, keyring, clock=clock, initdata=initdata)
    return Services(
        settings=settings,
        store=store,
        keyring=keyring,
        clock=clock,
        principals=Principals(store, clock=clock, require_host_token=settings.require_host_token),
        vms=vms,
        firmware=Firmware(settings, store, store, clock=clock),
        events=Events(store, store),
        launches=Launches(
            settings,
            vms=vms,
            vm_repo=store,
            launches=store,
            events=store,
            firmware=store,
            keyring=keyring,
            clock=clock,
        ),
        upkeep=Upkeep(settings, store, clock=clock),
        attestations=Attestations(
            settings,
            vms=vms,
            vm_repo=store,
            challenges=store,
            events=store,
            firmware=store,
            clock=clock,
        ),
        initdata=initdata,
    )
