"""Initdata: canonical encoding, HOST_DATA, and refusal of malformed documents."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import uuid

import pytest

from attestd.guest import initdata
from attestd.guest.initdata import InitdataError

VM = uuid.UUID("9f0c4c5e-0b7d-4c1b-a2a5-3f1e1b2f9a10")
PIN = initdata.format_pin(hashlib.sha256(b"spki").digest())
CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_canonical_document_and_host_data() -> None:
    doc = initdata.build(["https://a.example/v1/", "https://b.example/v1"], VM, pin=PIN)
    assert (
        doc
        == (
            'version = "0.1.0"\nalgorithm = "sha256"\n\n[data]\n'
            f'"attestd.pin" = "{PIN}"\n'
            '"attestd.service" = "https://a.example/v1\\nhttps://b.example/v1"\n'
            f'"attestd.vm-id" = "{VM}"\n'
        ).encode()
    )
    assert initdata.host_data(doc) == hashlib.sha256(doc).digest()
    parsed = initdata.parse(doc)
    assert parsed.services == ("https://a.example/v1", "https://b.example/v1")
    assert parsed.vm_id == VM and parsed.pin == PIN and parsed.ca_pem is None
    assert parsed.encode() == doc  # round trip: same bytes, same HOST_DATA


def test_encoding_is_stable_across_processes() -> None:
    code = (
        "import uuid,sys; from attestd.guest import initdata as i; "
        f"sys.stdout.write(i.build(['https://a/v1'], uuid.UUID('{VM}'), ca_pem={CA!r}).hex())"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin"},
        ).stdout
        for seed in ("1", "2", "3")
    }  # fmt: skip
    assert len(runs) == 1
    assert bytes.fromhex(runs.pop()) == initdata.build(["https://a/v1"], VM, ca_pem=CA)


def test_escaping_round_trips_awkward_strings() -> None:
    extra = {"x.odd": 'quote " back \\ tab \t ctl \x01 del \x7f é'}
    data = initdata.Initdata(("http://h/v1",), VM, ca_pem=CA, extra=extra).data()
    doc = initdata.encode(data)
    assert initdata.parse(doc).extra == extra


def test_other_algorithms_are_truncated_or_padded_to_32_bytes() -> None:
    data = initdata.Initdata(("http://h/v1",), VM, pin=PIN).data()
    doc = initdata.encode(data, algorithm="sha384")
    assert initdata.host_data(doc) == hashlib.sha384(doc).digest()[:32]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"\xff", "UTF-8"),
        (b"version = ", "not TOML"),
        (b'version = "0.2.0"\nalgorithm = "sha256"\n[data]\n', "version"),
        (b'version = "0.1.0"\nalgorithm = "md5"\n[data]\n', "algorithm"),
        (b'version = "0.1.0"\nalgorithm = "sha256"\nextra = 1\n[data]\n', "unknown top-level"),
        (b'version = "0.1.0"\nalgorithm = "sha256"\n', "no [data]"),
        (b'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n"attestd.vm-id" = 1\n', "string"),
        (b'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n"attestd.vm-id" = "x"\n', "lacks"),
        (
            b'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n"attestd.vm-id" = "x"\n'
            b'"attestd.service" = "https://a/v1"\n',
            "UUID",
        ),
        (
            f'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n"attestd.vm-id" = "{VM}"\n'
            '"attestd.service" = "ftp://a"\n'.encode(),
            "http(s)",
        ),
        (
            f'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n"attestd.vm-id" = "{VM}"\n'
            '"attestd.service" = "https://a"\n"attestd.pin" = "sha256//AAAA"\n'.encode(),
            "32-byte",
        ),
        (
            f'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n"attestd.vm-id" = "{VM}"\n'
            '"attestd.service" = "https://a"\n"attestd.typo" = "1"\n'.encode(),
            "unknown attestd",
        ),
        (b"#" * (initdata.MAX_SIZE + 1), "larger"),
    ],
)
def test_malformed_documents_are_refused(document: bytes, message: str) -> None:
    with pytest.raises(InitdataError, match=re.escape(message)):
        initdata.parse(document)


def test_host_data_check() -> None:
    doc = initdata.build(["https://a/v1"], VM, pin=PIN)
    initdata.check_host_data(doc, hashlib.sha256(doc).digest())
    with pytest.raises(InitdataError, match="does not match the HOST_DATA"):
        initdata.check_host_data(doc.replace(b"a/v1", b"b/v1"), hashlib.sha256(doc).digest())
    with pytest.raises(InitdataError, match="does not match"):
        initdata.check_host_data(doc, bytes(31))


def test_build_needs_a_service_identity() -> None:
    with pytest.raises(InitdataError, match="CA certificate or key pin"):
        initdata.build(["https://a/v1"], VM)
