"""Domain XML metadata namespace and ``prepare_domain``."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

import pytest

from attestd.errors import ParseError
from attestd.host.domain import (
    NAMESPACE,
    PLACEHOLDER,
    AttestdMetadata,
    mentions_attestd,
    parse_domain,
    prepare_domain,
)

UUID1 = "6a9a3a34-5b0e-4b55-9f57-2a4ef0c6e5b1"
VM = UUID("0f7c2c1e-3a52-4d0f-9f0e-1c7b9b4f7a11")
SEV_XML = f"""<domain type='kvm' id='7'>
  <name>a-rather-long-domain-name-for-short</name>
  <uuid>{UUID1}</uuid>
  <metadata><other:x xmlns:other="urn:other">keep</other:x></metadata>
  <vcpu>2</vcpu>
  <os><type>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF.amdsev.fd</loader></os>
  <launchSecurity type='sev'><policy>0x0003</policy></launchSecurity>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>"""
PLAIN_XML = f"""<domain type='qemu'><name>plain</name><uuid>{UUID1}</uuid><vcpu>1</vcpu>
<devices/></domain>"""


def test_prepare_real_sev_adds_metadata_placeholders_and_wrapper() -> None:
    meta = AttestdMetadata(service="https://attest.example/v1/", vm_id=VM)
    out = prepare_domain(SEV_XML, meta, emulator="/opt/attestd/bin/attestd-qemu")
    assert mentions_attestd(out)
    info = parse_domain(out)
    assert info.metadata == AttestdMetadata(service="https://attest.example/v1", vm_id=VM)
    assert info.sev is not None and info.sev.has_dh_cert and info.sev.has_session
    assert info.sev.policy == 3
    assert f"<dhCert>{PLACEHOLDER}</dhCert>" in out
    assert info.uses_wrapper and info.emulator == "/opt/attestd/bin/attestd-qemu"
    assert "urn:other" in out and "keep" in out  # other metadata survives
    assert info.short_name == "7-a-rather-long-domain"
    assert info.loader == Path("/usr/share/OVMF/OVMF.amdsev.fd")
    assert info.vcpus == 2
    # idempotent: preparing again replaces, never duplicates
    again = prepare_domain(out, meta, emulator=None)
    assert again.count(NAMESPACE) == out.count(NAMESPACE)
    assert again.count("<dhCert>") == 1


def test_metadata_round_trip_of_all_fields() -> None:
    meta = AttestdMetadata(
        service="http://127.0.0.1:8080/v1",
        vm_id=VM,
        simulate=True,
        firmware=Path("/fw.fd"),
        sim_state=Path("/var/lib/attestd/sim"),
        vcpu_type="EPYC-v4",
        autostart=True,
    )
    out = prepare_domain(PLAIN_XML, meta, emulator=None)
    assert parse_domain(out).metadata == meta
    assert parse_domain(out).emulator is None and not parse_domain(out).uses_wrapper


def test_simulated_domain_must_not_have_launch_security() -> None:
    meta = AttestdMetadata(service="https://a/v1", vm_id=VM, simulate=True)
    with pytest.raises(ParseError, match="must not have"):
        prepare_domain(SEV_XML, meta, emulator=None)


def test_real_mode_requires_launch_security() -> None:
    with pytest.raises(ParseError, match="launchSecurity"):
        prepare_domain(PLAIN_XML, AttestdMetadata(service="https://a/v1", vm_id=VM), emulator=None)


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ('service="ftp://x" vm-id="' + str(VM) + '"', "http"),
        ('service="https://x" vm-id="nope"', "vm-id"),
        ('service="https://x" vm-id="' + str(VM) + '" simulate="maybe"', "simulate"),
    ],
)
def test_bad_metadata_is_a_parse_error(attrs: str, message: str) -> None:
    xml = PLAIN_XML.replace(
        "<devices/>", f'<metadata><a:launch xmlns:a="{NAMESPACE}" {attrs}/></metadata><devices/>'
    )
    with pytest.raises(ParseError, match=message):
        parse_domain(xml)


@pytest.mark.parametrize("xml", ["<domain>", "<network/>", PLAIN_XML.replace(UUID1, "x")])
def test_not_a_domain(xml: str) -> None:
    with pytest.raises(ParseError):
        parse_domain(xml)


def test_examples_parse_as_attestd_domains() -> None:
    from tests.conftest import PROJECT_ROOT

    examples = PROJECT_ROOT / "examples" / "libvirt"
    sev = parse_domain((examples / "sev-domain.xml").read_text())
    assert sev.metadata is not None and not sev.metadata.simulate
    assert sev.sev is not None and sev.sev.has_dh_cert and sev.sev.has_session and sev.uses_wrapper
    sim = parse_domain((examples / "sim-domain.xml").read_text())
    assert sim.metadata is not None and sim.metadata.simulate and sim.sev is None
    for info in (sev, sim):  # wrapped: marked with the VM id
        assert info.uses_wrapper and info.metadata is not None
        assert info.marker == str(info.metadata.vm_id)


def test_ensure_uuid_adds_one_only_when_missing() -> None:
    from attestd.host.domain import ensure_uuid

    no_uuid = "<domain type='qemu'><name>g</name><devices/></domain>"
    with_uuid = ensure_uuid(no_uuid)
    assert parse_domain(with_uuid).uuid.version == 4
    assert ensure_uuid(with_uuid) == with_uuid
    assert ensure_uuid(SEV_XML) == SEV_XML


def test_wrapper_marker_follows_the_resulting_emulator() -> None:
    meta = AttestdMetadata(service="https://a/v1", vm_id=VM)
    extra = SEV_XML.replace(
        "</domain>",
        "<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
        "<qemu:arg value='-no-reboot'/></qemu:commandline></domain>",
    )
    wrapped = prepare_domain(extra, meta, emulator="/opt/attestd/bin/attestd-qemu")
    assert parse_domain(wrapped).marker == str(VM)
    assert '<qemu:arg value="-no-reboot" />' in wrapped  # the operator's own args stay
    # prepared again (emulator kept): one marker, still the VM id
    again = prepare_domain(wrapped, meta, emulator=None)
    assert again.count("ATTESTD_DOMAIN") == 1 and parse_domain(again).marker == str(VM)
    # agent path: no wrapper, no marker; the operator's <qemu:commandline> stays
    agent = prepare_domain(wrapped, meta, emulator="/usr/bin/qemu-system-x86_64")
    assert parse_domain(agent).marker is None and "-no-reboot" in agent
    bare = prepare_domain(SEV_XML, meta, emulator="/usr/bin/qemu-system-x86_64")
    assert "commandline" not in bare
