"""Tiny TCG test domains (no disks; qboot firmware; they only start, pause and cont)."""

from __future__ import annotations

import uuid as uuidlib
from pathlib import Path

from attestd.guest.secrets import SIM_SECRET_PORT
from attestd.host.domain import AttestdMetadata, prepare_domain

QBOOT = "/usr/share/qemu/qboot.rom"


def domain_xml(name: str, *, emulator: str, uuid: str | None = None) -> str:
    """A minimal domain: 64 MiB, 1 vCPU, qboot, no devices but the emulator."""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid or uuidlib.uuid4()}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><loader type='rom'>{QBOOT}</loader></os>
  <devices><emulator>{emulator}</emulator><memballoon model='none'/></devices>
</domain>
"""


def attestd_domain(
    name: str,
    service: str,
    *,
    wrapper: str | None,
    emulator: str,
    sim_state: Path | None = None,
    channel: Path | None = None,
) -> tuple[str, AttestdMetadata]:
    """A simulated-SEV attestd domain; the wrapper (if given) becomes its emulator.

    ``channel``: an explicit socket path for the simulated secret area's channel, for
    a host agent that runs outside the private libvirtd's mount namespace (libvirt's
    default path under /var/lib/libvirt is only visible inside it).
    """
    xml = domain_xml(name, emulator=emulator)
    if channel is not None:
        xml = xml.replace(
            "</devices>",
            f"<channel type='unix'><source mode='bind' path='{channel}'/>"
            f"<target type='virtio' name='{SIM_SECRET_PORT}'/></channel></devices>",
        )
    meta = AttestdMetadata(
        service=service, vm_id=uuidlib.uuid4(), simulate=True, sim_state=sim_state
    )
    return prepare_domain(xml, meta, emulator=wrapper), meta
