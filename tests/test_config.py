"""Settings: SNP initdata (public_urls, guest_ca_file, guest_pin; file and environment) and
the cache directories derived from data_dir."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from attestd import config
from attestd.errors import ParseError
from attestd.service.initdata import GuestTrust

PIN = "sha256//" + "A" * 43 + "="


def test_public_urls_from_environment_and_file(tmp_path: Path) -> None:
    env = {"ATTESTD_PUBLIC_URLS": " https://a.example/v1/ , http://b.example/v1,", "X": ""}
    path = tmp_path / "attestd.toml"
    path.write_text('public_urls = ["https://c.example/v1"]\nguest_pin = "' + PIN + '"\n')
    from_file = config.load(path, environ={})
    assert from_file.public_urls == ("https://c.example/v1",) and from_file.guest_pin == PIN
    from_env = config.load(path, environ=env)
    assert from_env.public_urls == ("https://a.example/v1", "http://b.example/v1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('public_urls = "https://a.example/v1"\n', "guest_ca_file or guest_pin"),
        ('public_urls = "ftp://a.example"\nguest_pin = "' + PIN + '"\n', "not an http(s) URL"),
        ("public_urls = 5\n", "expected URLs"),
        ('public_urls = "https://a.example/api"\nguest_pin = "' + PIN + '"\n', "v1 base URL"),
        ('guest_pin = "sha256//short"\n', "guest_pin"),
        ('guest_pin = "md5//AAAA"\n', "guest_pin"),
    ],
)
def test_bad_initdata_settings_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "attestd.toml"
    path.write_text(text)
    with pytest.raises(ParseError, match=re.escape(message)):
        config.load(path, environ={})


def test_guest_ca_file_is_read_and_checked(tmp_path: Path, testdata: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    settings = config.Settings(public_urls=("https://a.example/v1",), guest_ca_file=ca)
    with pytest.raises(ParseError, match=r"not PEM X\.509"):
        GuestTrust.from_settings(settings)
    with pytest.raises(ParseError, match="cannot read"):
        GuestTrust.from_settings(settings.replace(guest_ca_file=tmp_path / "missing.pem"))
    pem = (testdata / "sev" / "amd-ca-snp" / "milan" / "ark.pem").read_text()
    ca.write_text(pem)
    trust = GuestTrust.from_settings(settings)
    assert trust.ca_pem == pem and trust.missing() is None
    assert GuestTrust().missing() == "public_urls (ATTESTD_PUBLIC_URLS)"


def test_cek_cache_and_vcek_store_directories(tmp_path: Path) -> None:
    """docs/operator.md: VCEKs and CRLs live in ``<data_dir>/cek/vcek`` (below the CEK cache)."""
    settings = config.Settings(data_dir=tmp_path)
    assert settings.effective_cek_cache_dir == tmp_path / "cek"
    assert settings.vcek_store_dir == tmp_path / "cek" / "vcek"
    moved = settings.replace(cek_cache_dir=tmp_path / "elsewhere")
    assert moved.vcek_store_dir == tmp_path / "elsewhere" / "vcek"
