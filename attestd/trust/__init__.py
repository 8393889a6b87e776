"""Trust inputs of chain verification: AMD root anchors and ASK-signed CEKs.

:mod:`attestd.trust.anchors` loads the pinned AMD roots plus
``ATTESTD_TRUST_ANCHORS_DIR`` (SEV ``ark.cert``/``ask.cert``; SEV-SNP ``ark.pem``/``ask.pem``
[/``asvk.pem``], :func:`load_snp_anchors`); :mod:`attestd.trust.kds` keeps the CEK cache and
fetches from AMD KDS (``attestd cek fetch|import``). The launch use-case gives
both to :func:`attestd.sev.chain.verify_chain`.
"""

from __future__ import annotations

from attestd.trust.anchors import load_anchor, load_anchors, load_snp_anchors

__all__ = ["load_anchor", "load_anchors", "load_snp_anchors"]
