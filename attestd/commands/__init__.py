"""Sub-commands of the ``attestd`` CLI (see ``attestd.cli``)."""
