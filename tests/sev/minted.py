"""A complete platform chain minted with the public certs API under a test anchor."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from attestd.sev.certs import Algorithm, AmdCaCertificate, SevCertificate, Usage
from attestd.sev.chain import PlatformChain, TrustAnchor


@dataclass(frozen=True)
class Minted:
    anchor: TrustAnchor
    chain: PlatformChain
    signed_cek: SevCertificate


@functools.cache
def minted() -> Minted:
    """ARK/ASK (RSA-2048) named "sim", and an OCA/PEK/PDH chain whose CEK is unsigned."""
    ark_key = rsa.generate_private_key(65537, 2048)
    ask_key = rsa.generate_private_key(65537, 2048)
    ark = AmdCaCertificate.create(
        ark_key, key_id=b"\x01" * 16, certifying_id=b"\x01" * 16, usage=Usage.ARK, signer=ark_key
    )
    ask = AmdCaCertificate.create(
        ask_key, key_id=b"\x02" * 16, certifying_id=b"\x01" * 16, usage=Usage.ASK, signer=ark_key
    )
    keys = {u: ec.generate_private_key(ec.SECP384R1()) for u in (Usage.CEK, Usage.OCA, Usage.PEK)}
    pdh_key = ec.generate_private_key(ec.SECP384R1())

    def new(usage: Usage, key: ec.EllipticCurvePrivateKey, algo: Algorithm) -> SevCertificate:
        return SevCertificate.from_public_key(key.public_key(), usage, algo, 1, 55)

    cek = new(Usage.CEK, keys[Usage.CEK], Algorithm.ECDSA_SHA256)
    oca = new(Usage.OCA, keys[Usage.OCA], Algorithm.ECDSA_SHA256).sign_ecdsa(
        keys[Usage.OCA], Usage.OCA, 0
    )
    pek = (
        new(Usage.PEK, keys[Usage.PEK], Algorithm.ECDSA_SHA256)
        .sign_ecdsa(keys[Usage.OCA], Usage.OCA, 0)
        .sign_ecdsa(keys[Usage.CEK], Usage.CEK, 1)
    )
    pdh = new(Usage.PDH, pdh_key, Algorithm.ECDH_SHA256).sign_ecdsa(keys[Usage.PEK], Usage.PEK, 0)
    return Minted(
        TrustAnchor("sim", ark, ask),
        PlatformChain(pdh, pek, oca, cek),
        cek.sign_rsa(ask_key),
    )
