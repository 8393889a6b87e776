"""The ``/v1`` blueprints."""
