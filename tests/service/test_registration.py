"""Registration.check: every rule, each case asserting its field and machine code."""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from uuid import UUID

import pytest

from attestd.service.registration import (
    LuksPassphrase,
    Raw,
    Registration,
    Secret,
    Volume,
)

BASE = Registration(scheme="amd-sev", policy=1, firmware_hashes=("ab" * 32,))


def _vol(name: str, device: str, mount: str | None = None) -> Secret:
    return Volume(name, device, generate=True, mount_point=mount)


def _raw(guid: str) -> Secret:
    return Raw(UUID(guid), b"x")


CASES: list[tuple[str, dict[str, Any], Any, str]] = [
    ("es bit without es scheme", {"policy": 0x5}, "policy", "es_bit_mismatch"),
    ("es scheme without es bit", {"scheme": "amd-sev-es"}, "policy", "es_bit_mismatch"),
    ("reserved policy bits", {"policy": 0x41}, "policy", "reserved_policy_bits"),
    ("unknown scheme", {"scheme": "amd-sev-snp"}, "scheme", "unknown_scheme"),
    ("no launch inputs", {"firmware_hashes": ()}, "firmware-hashes", "no_launch_inputs"),
    ("initrd without kernel", {"initrd_hash": "cd" * 32}, "initrd-hash", "needs_kernel_hash"),
    ("cmdline without kernel", {"cmdline_hash": "cd" * 32}, "cmdline-hash", "needs_kernel_hash"),
    ("cloud cert garbage", {"cloud_cert": b"\x00" * 0x824}, "cloud-cert", "cloud_cert_malformed"),
    (
        "two luks passphrases",
        {"secrets": (LuksPassphrase("a"),) * 2},
        "secrets",
        "luks_passphrase_twice",
    ),
    (
        "shared device",
        {"secrets": (_vol("a", "virtio:x"), _vol("b", "virtio:x"))},
        "secrets",
        "duplicate_device",
    ),
    (
        "duplicate volume name",
        {"secrets": (_vol("a", "virtio:x"), _vol("a", "virtio:y"))},
        "secrets",
        "duplicate_name",
    ),
    (
        "overlapping mounts",
        {"secrets": (_vol("a", "virtio:x", "/data"), _vol("b", "virtio:y", "/data/b"))},
        "secrets",
        "mounts_overlap",
    ),
    (
        "reserved mount point",
        {"secrets": (_vol("home", "virtio:x"),)},
        ("secrets", 0, "mount-point"),
        "mount_point_reserved",
    ),
    (
        "dots in mount point",
        {"secrets": (_vol("d", "virtio:x", "/a/../b"),)},
        ("secrets", 0, "mount-point"),
        "mount_point_dots",
    ),
    (
        "volume with neither passphrase nor generate",
        {"secrets": (Volume("d", "virtio:x"),)},
        ("secrets", 0, "passphrase"),
        "passphrase_or_generate",
    ),
    (
        "dots in device",
        {"secrets": (_vol("d", "/dev/../etc/x"),)},
        ("secrets", 0, "device"),
        "device_dots",
    ),
    (
        "reserved guid",
        {"secrets": (_raw("736869e5-84f0-4973-92ec-06879ce3da0b"),)},
        ("secrets", 0, "guid"),
        "guid_reserved",
    ),
    (
        "duplicate raw guid",
        {"secrets": (_raw("0c8b5b2e-2f6a-4b7d-9a55-7d1f3c2e4a10"),) * 2},
        "secrets",
        "duplicate_guid",
    ),
]


@pytest.mark.parametrize(
    ("change", "field", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_each_rule_reports_its_field_and_code(
    change: dict[str, Any], field: Any, code: str
) -> None:
    problems = replace(BASE, **change).check()
    assert (field, code) in [(p.field, p.code) for p in problems], problems


def test_valid_registration_has_no_problem() -> None:
    assert BASE.check() == []


def test_every_problem_is_reported_at_once() -> None:
    bad = replace(BASE, policy=0x5, firmware_hashes=(), initrd_hash="cd" * 32)
    codes = {p.code for p in bad.check()}
    assert codes == {"es_bit_mismatch", "no_launch_inputs", "needs_kernel_hash"}


def test_stored_secrets_of_existing_databases_load_and_store_the_same() -> None:
    from attestd.service.registration import from_stored

    stored = [
        {"type": "luks-passphrase", "passphrase": "grub"},
        {
            "type": "volume",
            "name": "data",
            "device": "virtio:d",
            "generate": True,
            "passphrase": "g" * 43,
            "mount-point": "/data",
        },
        {"type": "volume", "name": "logs", "device": "virtio:l", "passphrase": "p"},
        {"type": "env", "name": "app.env", "values": {"A": "1"}},
        {"type": "secret-file", "name": "db.env", "values": {"PW": "x"}},
        {"type": "raw", "guid": "0c8b5b2e-2f6a-4b7d-9a55-7d1f3c2e4a10", "data": "cmF3"},
    ]
    assert [from_stored(entry).to_stored() for entry in stored] == stored
    with pytest.raises(ValueError, match="unknown secret type"):
        from_stored({"type": "nope"})
    assert "grub" not in repr(from_stored(stored[0]))
