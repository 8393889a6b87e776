"""Platform certificate chain verification: ARK -> ASK -> CEK -> PEK <- OCA, PEK -> PDH.

The AMD roots are pinned (``builtin/<gen>/{ark,ask}.cert``, or extra anchors the
operator configured); an ARK/ASK sent by the host is never used. The generation
is the anchor whose ASK verifies the CEK. Every check names the first failing
link. Pure: the only file access is reading the package's own pinned roots.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from cryptography.hazmat.primitives.asymmetric import ec

from attestd.errors import ChainInvalid, ParseError
from attestd.sev.certs import (
    SEV_CERT_SIZE,
    Algorithm,
    AmdCaCertificate,
    Curve,
    EcPublicKey,
    SevCertificate,
    Usage,
)

BUILTIN_GENERATIONS = ("naples", "rome", "milan", "genoa", "turin")

_ECDSA = (Algorithm.ECDSA_SHA256, Algorithm.ECDSA_SHA384)
_ECDH = (Algorithm.ECDH_SHA256, Algorithm.ECDH_SHA384)


@dataclass(frozen=True)
class PlatformChain:
    """The platform's certificates as ``PDH_CERT_EXPORT`` returns them."""

    pdh: SevCertificate
    pek: SevCertificate
    oca: SevCertificate
    cek: SevCertificate

    @classmethod
    def from_export(cls, pdh: bytes, cert_chain: bytes) -> PlatformChain:
        """Parse libvirt/QEMU's ``pdh`` and ``cert-chain`` (PEK || OCA || CEK), base64-decoded."""
        if len(cert_chain) != 3 * SEV_CERT_SIZE:
            raise ParseError(
                f"cert chain: expected {3 * SEV_CERT_SIZE} bytes (PEK||OCA||CEK), "
                f"got {len(cert_chain)}"
            )
        pek, oca, cek = (
            SevCertificate.unpack(cert_chain[i : i + SEV_CERT_SIZE])
            for i in range(0, len(cert_chain), SEV_CERT_SIZE)
        )
        return cls(SevCertificate.unpack(pdh), pek, oca, cek)

    @classmethod
    def from_sevctl(cls, data: bytes) -> PlatformChain:
        """Parse ``sevctl export [--full]``: PDH, PEK, OCA, CEK, then optionally ASK and ARK.

        The host's ASK/ARK must parse but are ignored: only pinned anchors are trusted.
        """
        head = 4 * SEV_CERT_SIZE
        if len(data) < head:
            raise ParseError(f"sevctl export: expected at least {head} bytes, got {len(data)}")
        chain = cls.from_export(data[:SEV_CERT_SIZE], data[SEV_CERT_SIZE:head])
        rest = data[head:]
        if rest:
            _ask, rest = AmdCaCertificate.unpack_prefix(rest)
            AmdCaCertificate.unpack(rest)
        return chain


@dataclass(frozen=True)
class TrustAnchor:
    """A pinned ARK/ASK pair; ``name`` is the generation or the anchor's directory name."""

    name: str
    ark: AmdCaCertificate
    ask: AmdCaCertificate

    def check(self) -> tuple[str, str]:
        """Verify ARK and ASK; return the two link descriptions or raise ``ChainInvalid``."""
        ark, ask = self.ark, self.ask
        if ark.usage is not Usage.ARK:
            raise ChainInvalid(f"the {self.name} ARK has usage {ark.usage.name}, expected ARK")
        if ark.certifying_id != ark.key_id or not ark.is_signed_by(ark):
            raise ChainInvalid(f"the {self.name} ARK is not self-signed")
        if ask.usage is not Usage.ASK:
            raise ChainInvalid(f"the {self.name} ASK has usage {ask.usage.name}, expected ASK")
        if not ask.is_signed_by(ark):
            raise ChainInvalid(f"the {self.name} ASK is not signed by the {self.name} ARK")
        return (
            f"ARK ({self.name}, key id {ark.key_id.hex()}) is self-signed",
            f"ASK ({self.name}, key id {ask.key_id.hex()}) is signed by the {self.name} ARK",
        )


@functools.cache
def builtin_anchors() -> tuple[TrustAnchor, ...]:
    """The pinned AMD roots for Naples, Rome, Milan, Genoa and Turin (package data)."""
    root = resources.files("attestd.sev") / "builtin"
    anchors = []
    for gen in BUILTIN_GENERATIONS:
        anchor = TrustAnchor(
            gen,
            AmdCaCertificate.unpack((root / gen / "ark.cert").read_bytes()),
            AmdCaCertificate.unpack((root / gen / "ask.cert").read_bytes()),
        )
        anchor.check()
        anchors.append(anchor)
    return tuple(anchors)


@dataclass(frozen=True)
class VerifiedChain:
    """A chain anchored to a pinned root: the generation, the trusted PDH and the links checked."""

    generation: str
    pdh: SevCertificate
    links: tuple[str, ...]

    def pdh_key(self) -> ec.EllipticCurvePublicKey:
        """The verified PDH public key (P-384), input to the launch session's ECDH."""
        return self.pdh.public_key()


@dataclass(frozen=True)
class ChainReport:
    """The outcome of walking a chain: the links that verified, then the failure if any.

    When the CEK cannot be anchored, ``unanchored`` lists the platform's own links
    below it (OCA, PEK, PDH) that still verify with the platform CEK: useful to
    diagnose, worth nothing as evidence.
    """

    links: tuple[str, ...]
    failure: str | None
    generation: str | None
    pdh: SevCertificate
    unanchored: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.failure is None


class _Failed(Exception):
    pass


def _check_cert(name: str, cert: SevCertificate, usage: Usage, algos: Sequence[Algorithm]) -> None:
    if cert.usage is not usage:
        raise _Failed(f"{name} has usage {cert.usage.name}, expected {usage.name}")
    if cert.algorithm not in algos:
        raise _Failed(f"{name} has algorithm {cert.algorithm.name}")
    if not isinstance(cert.key, EcPublicKey) or cert.key.curve is not Curve.P384:
        raise _Failed(f"{name} key is not a P-384 key")
    try:
        cert.public_key()
    except ParseError:
        raise _Failed(f"{name} key is not a point on P-384") from None


def _signed(child: str, cert: SevCertificate, parent: str, signer: SevCertificate) -> str:
    slot = cert.signed_slot(signer)
    if slot is None:
        raise _Failed(f"{child} is not signed by the {parent}")
    return f"{child} is signed by the {parent} (slot {slot + 1})"


def _same_key(a: SevCertificate, b: SevCertificate) -> bool:
    return a.algorithm is b.algorithm and a.key == b.key


def _anchor_cek(
    cek: SevCertificate, anchors: Sequence[TrustAnchor], generation: str | None, links: list[str]
) -> str:
    """Find the anchor whose ASK signed the CEK; append its links; return its name."""
    candidates = [a for a in anchors if generation is None or a.name == generation]
    if generation is not None and not candidates:
        raise _Failed(f"no trust anchor named {generation!r}")
    for anchor in candidates:
        slot = cek.signed_slot(anchor.ask)
        if slot is None:
            continue
        try:
            links.extend(anchor.check())
        except ChainInvalid as exc:
            raise _Failed(exc.message) from None
        links.append(f"CEK is signed by the {anchor.name} ASK (slot {slot + 1})")
        return anchor.name
    if generation is not None:
        raise _Failed(f"CEK is not signed by the {generation} ASK")
    if not any(s.usage == Usage.ASK and not s.is_empty for s in cek.signatures):
        raise _Failed(
            "CEK is not signed by any ASK: it has no ASK signature (the firmware exports the "
            "CEK unsigned; supply the ASK-signed CEK from AMD's key server)"
        )
    names = ", ".join(a.name for a in candidates) or "none"
    raise _Failed(f"CEK is not signed by any trusted ASK (tried: {names})")


def check_chain(
    chain: PlatformChain,
    anchors: Sequence[TrustAnchor],
    *,
    signed_cek: SevCertificate | None = None,
    pinned_oca: SevCertificate | None = None,
    generation: str | None = None,
) -> ChainReport:
    """Walk the chain from the root down, stopping at the first failing link.

    Order: ARK, ASK, CEK by ASK, OCA (self-signed or pinned), PEK by OCA, PEK by CEK,
    PDH by PEK. ``signed_cek`` (from AMD's key server) replaces the platform's CEK for
    the ASK link and must hold the same key. ``generation`` pins the anchor by name.
    """
    links: list[str] = []
    found: str | None = None
    try:
        _check_cert("CEK", chain.cek, Usage.CEK, _ECDSA)
        cek = chain.cek
        if signed_cek is not None:
            _check_cert("signed CEK", signed_cek, Usage.CEK, _ECDSA)
            if not _same_key(signed_cek, chain.cek):
                raise _Failed("signed CEK does not hold the platform CEK's key")
            cek = signed_cek
        found = _anchor_cek(cek, anchors, generation, links)
    except _Failed as exc:
        below: list[str] = []
        try:
            _platform_links(chain, chain.cek, pinned_oca, below)
        except _Failed:
            pass
        return ChainReport(tuple(links), str(exc), found, chain.pdh, tuple(below))
    try:
        _platform_links(chain, cek, pinned_oca, links)
    except _Failed as exc:
        return ChainReport(tuple(links), str(exc), found, chain.pdh)
    return ChainReport(tuple(links), None, found, chain.pdh)


def _platform_links(
    chain: PlatformChain, cek: SevCertificate, pinned_oca: SevCertificate | None, links: list[str]
) -> None:
    """The links below the CEK: OCA, PEK by OCA and CEK, PDH by PEK."""
    _check_cert("OCA", chain.oca, Usage.OCA, _ECDSA)
    if pinned_oca is not None:
        if not _same_key(pinned_oca, chain.oca) or pinned_oca.usage is not Usage.OCA:
            raise _Failed("OCA is not the pinned OCA")
        links.append("OCA is the pinned OCA")
    else:
        slot = chain.oca.signed_slot(chain.oca)
        if slot is None:
            raise _Failed("OCA is not self-signed")
        links.append(f"OCA is self-signed (slot {slot + 1})")
    _check_cert("PEK", chain.pek, Usage.PEK, _ECDSA)
    links.append(_signed("PEK", chain.pek, "OCA", chain.oca))
    links.append(_signed("PEK", chain.pek, "CEK", cek))
    _check_cert("PDH", chain.pdh, Usage.PDH, _ECDH)
    links.append(_signed("PDH", chain.pdh, "PEK", chain.pek))


def check_platform_links(chain: PlatformChain, pinned_oca: SevCertificate | None = None) -> None:
    """Check every link that needs no AMD key (OCA, PEK by OCA and by the platform's
    CEK, PDH by PEK); ``ChainInvalid`` names the first failing one.

    Worth nothing as evidence on its own: it lets the service refuse a chain before
    it asks AMD's key server for the signed CEK.
    """
    try:
        _check_cert("CEK", chain.cek, Usage.CEK, _ECDSA)
        _platform_links(chain, chain.cek, pinned_oca, [])
    except _Failed as exc:
        raise ChainInvalid(str(exc)) from None


def verify_chain(
    chain: PlatformChain,
    anchors: Sequence[TrustAnchor],
    *,
    signed_cek: SevCertificate | None = None,
    pinned_oca: SevCertificate | None = None,
    generation: str | None = None,
) -> VerifiedChain:
    """Verify the chain to a pinned root; ``ChainInvalid`` names the first failing link."""
    report = check_chain(
        chain, anchors, signed_cek=signed_cek, pinned_oca=pinned_oca, generation=generation
    )
    if report.failure is not None or report.generation is None:
        raise ChainInvalid(report.failure or "chain is not anchored")
    return VerifiedChain(report.generation, report.pdh, report.links)
