"""attestd: remote attestation for AMD SEV / SEV-ES confidential VMs on libvirt."""

__version__ = "0.1.0"
