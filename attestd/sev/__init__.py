"""The pure AMD SEV / SEV-ES guest-owner protocol core (bytes in, objects/bytes out)."""
