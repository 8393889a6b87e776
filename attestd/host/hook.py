"""The libvirt qemu hook's work for attestd domains (called by ``hooks/qemu``).

``start begin``: ``POST /launch`` and write the per-launch GODH certificate and
session into the ``dh_cert.base64``/``session.base64`` files libvirt created
(in place, so owner and label stay), and leave a launch state for the wrapper or
the agent. ``release end``: forget the launch state. A ``sev-snp`` domain is passed
through untouched (its guest attests itself); a *simulated* SNP domain gets its
simulated PSP started at ``start begin`` and stopped at ``release end``
(:mod:`attestd.host.snpsim`). Never calls libvirt. Any
failure exits 1 with one line on stderr, which libvirt shows in its error.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from attestd.errors import AttestdError
from attestd.host.client import ServiceClient
from attestd.host.config import HostSettings, load_settings
from attestd.host.domain import parse_domain
from attestd.host.driver import begin_launch
from attestd.host.snpsim import start_psp, stop_psp
from attestd.host.state import remove_state


def handle(settings: HostSettings, op: str, subop: str, xml: str) -> None:
    """Do the attestd work for one hook phase (raises AttestdError on failure)."""
    domain = parse_domain(xml)
    if domain.sim_snp is not None and not domain.is_snp:
        if (op, subop) == ("start", "begin"):
            start_psp(settings, domain)
        elif (op, subop) == ("release", "end"):
            stop_psp(settings, domain.uuid)
        return
    if domain.metadata is None or domain.is_snp:
        # SEV-SNP guests attest themselves: nothing to do on the host, whatever the XML says
        return
    if (op, subop) == ("start", "begin"):
        begin_launch(settings, domain, lambda url: ServiceClient(url, settings))
    elif (op, subop) == ("release", "end"):
        remove_state(settings.state_dir, domain.uuid)


def run(argv: Sequence[str], xml: str, prog: str = "attestd") -> int:
    """``argv`` = ``[domain, op, subop, extra]`` as libvirt passes them."""
    try:
        handle(load_settings(), argv[1], argv[2], xml)
    except AttestdError as exc:
        print(f"{prog}: {argv[0]}: {exc.message}", file=sys.stderr)
        return 1
    except Exception as exc:  # fail closed, but say what happened
        print(f"{prog}: {argv[0]}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0
