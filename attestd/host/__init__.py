"""Host side of attestd: libvirt hook, emulator wrapper with QMP relay, host agent.

Everything here talks to the attestd service only over HTTP (``client.py``) and
shares one launch driver (``driver.py``).
"""
