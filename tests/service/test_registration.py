"""Registration.check: every rule, each case asserting its field and machine code."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from attestd.service.registration import Registration

BASE = Registration(scheme="amd-sev", policy=1, firmware_hashes=("ab" * 32,))


def _vol(name: str, device: str, mount: str | None = None) -> dict[str, Any]:
    entry = {"type": "volume", "name": name, "device": device, "generate": True}
    if mount:
        entry["mount-point"] = mount
    return entry


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
        {"secrets": ({"type": "luks-passphrase", "passphrase": "a"},) * 2},
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
        "dots in device",
        {"secrets": (_vol("d", "/dev/../etc/x"),)},
        ("secrets", 0, "device"),
        "device_dots",
    ),
    (
        "reserved guid",
        {
            "secrets": (
                {"type": "raw", "guid": "736869e5-84f0-4973-92ec-06879ce3da0b", "data": b"x"},
            )
        },
        ("secrets", 0, "guid"),
        "guid_reserved",
    ),
    (
        "duplicate raw guid",
        {
            "secrets": (
                {"type": "raw", "guid": "0c8b5b2e-2f6a-4b7d-9a55-7d1f3c2e4a10", "data": b"x"},
            )
            * 2
        },
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
