"""The service's use-cases, scheme-neutral where they can be, over storage Protocols.

Build them with :func:`attestd.service.factory.build_services`; the Flask adapter
and the CLI both do. One module per domain: :mod:`~attestd.service.owners`
(owners, hosts, tokens), :mod:`~attestd.service.vms` (registration use-cases),
:mod:`~attestd.service.firmware`, :mod:`~attestd.service.events`,
:mod:`~attestd.service.launches` (SEV / SEV-ES pre-attestation), with the pure
decision in :mod:`~attestd.service.acceptance`, the model in
:mod:`~attestd.service.registration` and the guest payload in
:mod:`~attestd.service.payload`.
"""
