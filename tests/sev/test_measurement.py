"""LAUNCH_MEASURE: the five known answers, both API forms, constant-time verify."""

from __future__ import annotations

import hashlib
import hmac
import struct
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestd.errors import MeasurementMismatch, ParseError
from attestd.sev.session import (
    FirmwareVersion,
    LaunchMeasurement,
    compute_measure,
    verify_measurement,
)
from tests.sev.session_kat import b64, read, vectors


def _kernel_hashes_table(kernel: bytes, initrd: bytes, cmdline: str) -> bytes:
    """The SEV hashes table written out from sev-protocol.md §6.3 (u16 lengths, padded)."""
    entries = b""
    for guid, content in (
        ("97d02dd8-bd20-4c94-aa78-e7714d36ab2a", cmdline.encode() + b"\0"),
        ("44baf731-3a2f-4bd7-9af1-41e29169781d", initrd),
        ("4de79437-abd2-427f-b835-d5b172d2045b", kernel),
    ):
        entries += UUID(guid).bytes_le + struct.pack("<H", 50) + hashlib.sha256(content).digest()
    header = UUID("9438d606-4f22-4cc9-b479-a793d411fd21").bytes_le
    table = header + struct.pack("<H", 18 + len(entries)) + entries
    return table + bytes(-len(table) % 16)


def _launch_digest(testdata: Path, case: dict[str, Any]) -> bytes:
    if "launch_digest_hex" in case:
        return bytes.fromhex(case["launch_digest_hex"])
    if "launch_digest_b64" in case:
        return b64(case["launch_digest_b64"])
    measured = read(testdata, case["firmware_file"])
    if "kernel_file" in case:
        table = _kernel_hashes_table(
            read(testdata, case["kernel_file"]),
            read(testdata, case["initrd_file"]),
            case["cmdline"],
        )
        assert len(table) == case["expected_hashes_table_len"]
        measured += table
    if "vmsa_cpu0_file" in case:
        measured += read(testdata, case["vmsa_cpu0_file"])
        measured += read(testdata, case["vmsa_cpu1_file"]) * (case["num_cpus"] - 1)
    return hashlib.sha256(measured).digest()


def _case_inputs(
    testdata: Path, case: dict[str, Any]
) -> tuple[bytes, FirmwareVersion, bytes, bytes]:
    tik = bytes.fromhex(case["tik_hex"]) if "tik_hex" in case else read(testdata, case["tik_file"])
    version = FirmwareVersion(case["api_major"], case["api_minor"], case["build_id"])
    if "expected_measurement_hex" in case:
        expected = bytes.fromhex(case["expected_measurement_hex"]) + bytes.fromhex(
            case["mnonce_hex"]
        )
    elif "expected_measure_plus_mnonce_b64" in case:
        expected = b64(case["expected_measure_plus_mnonce_b64"])
    else:
        expected = b64(case["launch_measure_blob_b64"])
    return tik, version, _launch_digest(testdata, case), expected


def test_all_five_measurement_vectors_reproduce(testdata: Path) -> None:
    cases = vectors(testdata, "measurement")
    assert len(cases) == 5
    for case in cases:
        tik, version, digest, expected = _case_inputs(testdata, case)
        blob = LaunchMeasurement.unpack(expected)
        measure = compute_measure(tik, version, case["policy_u32"], digest, blob.mnonce)
        assert measure == blob.measure, case["name"]
        assert LaunchMeasurement(measure, blob.mnonce).pack() == expected
        found = verify_measurement(tik, blob, version, case["policy_u32"], [b"\x00" * 32, digest])
        assert found == digest, case["name"]


@pytest.mark.parametrize(
    "change",
    ["tik", "api_major", "api_minor", "build_id", "policy", "digest", "mnonce", "measure"],
)
def test_every_bound_input_changes_the_outcome(testdata: Path, change: str) -> None:
    case = vectors(testdata, "measurement")[1]
    tik, version, digest, expected = _case_inputs(testdata, case)
    blob = LaunchMeasurement.unpack(expected)
    policy = case["policy_u32"]
    if change == "tik":
        tik = bytes([tik[0] ^ 1]) + tik[1:]
    elif change == "api_major":
        version = FirmwareVersion(version.api_major + 1, version.api_minor, version.build_id)
    elif change == "api_minor":
        version = FirmwareVersion(version.api_major, version.api_minor + 1, version.build_id)
    elif change == "build_id":
        version = FirmwareVersion(version.api_major, version.api_minor, version.build_id + 1)
    elif change == "policy":
        policy ^= 1
    elif change == "digest":
        digest = bytes([digest[0] ^ 1]) + digest[1:]
    elif change == "mnonce":
        blob = LaunchMeasurement(blob.measure, bytes(16))
    else:
        blob = LaunchMeasurement(bytes([blob.measure[0] ^ 1]) + blob.measure[1:], blob.mnonce)
    with pytest.raises(MeasurementMismatch) as info:
        verify_measurement(tik, blob, version, policy, [digest])
    assert digest.hex() not in str(info.value) and blob.measure.hex() not in str(info.value)


def test_old_api_form_drops_the_context_prefix() -> None:
    tik, digest, mnonce = b"\x01" * 16, b"\x02" * 32, b"\x03" * 16
    old = compute_measure(tik, FirmwareVersion(0, 16, 5), 1, digest, mnonce)
    assert old == hmac.new(tik, b"\x01\x00\x00\x00" + digest + mnonce, "sha256").digest()
    new = compute_measure(tik, FirmwareVersion(0, 17, 5), 1, digest, mnonce)
    msg = b"\x04\x00\x11\x05" + b"\x01\x00\x00\x00" + digest + mnonce
    assert new == hmac.new(tik, msg, "sha256").digest()


def test_no_candidates_is_a_mismatch() -> None:
    blob = LaunchMeasurement(b"\x00" * 32, b"\x00" * 16)
    with pytest.raises(MeasurementMismatch):
        verify_measurement(b"\x00" * 16, blob, FirmwareVersion(1, 55, 21), 1, [])


def test_returns_the_first_matching_candidate_even_if_listed_late() -> None:
    tik, mnonce = b"\x09" * 16, b"\x08" * 16
    version = FirmwareVersion(1, 55, 21)
    digests = [bytes([i]) * 32 for i in range(5)]
    blob = LaunchMeasurement(compute_measure(tik, version, 1, digests[3], mnonce), mnonce)
    assert verify_measurement(tik, blob, version, 1, digests) == digests[3]


def test_input_validation() -> None:
    with pytest.raises(ParseError):
        FirmwareVersion(256, 0, 0)
    with pytest.raises(ParseError):
        compute_measure(b"k" * 16, FirmwareVersion(1, 55, 0), 1, b"\x00" * 31, b"\x00" * 16)
    with pytest.raises(ParseError):
        compute_measure(b"k" * 16, FirmwareVersion(1, 55, 0), 1, b"\x00" * 32, b"\x00" * 15)
    with pytest.raises(ParseError):
        compute_measure(b"k" * 16, FirmwareVersion(1, 55, 0), 0x100, b"\x00" * 32, b"\x00" * 16)


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=96))
def test_measurement_parser_raises_only_parse_error(data: bytes) -> None:
    try:
        blob = LaunchMeasurement.unpack(data)
    except ParseError:
        assert len(data) != 48
    else:
        assert blob.pack() == data
