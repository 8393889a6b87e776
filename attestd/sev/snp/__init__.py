"""SEV-SNP attestation (pure): the report layout, the X.509 VCEK/VLEK chain, verification.

``report`` (ATTESTATION_REPORT v2-v5, TCB, policy), ``certs`` (ARK/ASK/ASVK, VCEK/VLEK,
pinned roots, certificate table), ``verify`` (links, decision, binding, JWE).
"""
