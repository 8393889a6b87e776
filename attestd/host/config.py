"""Host-side settings: ``/etc/attestd/host.toml`` (or ``$ATTESTD_HOST_CONFIG``).

libvirt clears the environment of hooks and of the emulator, so the file path is
fixed; the environment variable exists for the host agent and for tests.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attestd.errors import ParseError

DEFAULT_CONFIG = Path("/etc/attestd/host.toml")


@dataclass(frozen=True, slots=True)
class HostSettings:
    """Everything the hook, the wrapper and the agent need to know about this host."""

    qemu_binary: Path = Path("/usr/bin/qemu-system-x86_64")
    state_dir: Path = Path("/run/attestd/host")
    platform_cache: Path = Path("/var/lib/attestd/host/platform.json")
    libvirt_lib_dir: Path = Path("/var/lib/libvirt/qemu")
    sim_state_dir: Path = Path("/var/lib/attestd/sim")
    token_file: Path | None = None
    ca_bundle: Path | None = None
    timeout: float = 10.0
    retries: int = 3
    allow_http: bool = False
    libvirt_uri: str = "qemu:///system"

    def host_token(self) -> str | None:
        """The optional host token (first line of ``token_file``)."""
        if self.token_file is None:
            return None
        return self.token_file.read_text(encoding="utf-8").strip() or None


def _convert(field: dataclasses.Field[Any], value: object) -> object:
    kind = str(field.type)
    if "Path" in kind:
        if not isinstance(value, str):
            raise ParseError(f"host config: {field.name} must be a string path")
        return Path(value)
    if kind == "float":
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ParseError(f"host config: {field.name} must be a number")
        return float(value)
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ParseError(f"host config: {field.name} must be an integer")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ParseError(f"host config: {field.name} must be true or false")
        return value
    if not isinstance(value, str):
        raise ParseError(f"host config: {field.name} must be a string")
    return value


def parse_settings(text: str) -> HostSettings:
    """Build settings from TOML text; unknown keys are an error."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ParseError(f"host config: {exc}") from exc
    fields = {f.name: f for f in dataclasses.fields(HostSettings)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ParseError(f"host config: unknown keys {', '.join(unknown)}")
    kwargs = {name: _convert(fields[name], value) for name, value in data.items()}
    return HostSettings(**kwargs)  # type: ignore[arg-type]


def config_path() -> Path:
    """The host config file in effect."""
    return Path(os.environ.get("ATTESTD_HOST_CONFIG", str(DEFAULT_CONFIG)))


def load_settings(path: Path | None = None) -> HostSettings:
    """Read the host config file.

    A missing default file (``config_path()``) means all defaults; a ``path`` given
    explicitly (``--config``) must exist. Unreadable or binary files are a ParseError.
    """
    explicit = path is not None
    path = path or config_path()
    if path.exists() and not path.is_file():
        raise ParseError(f"host config {path} is not a regular file")
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        if explicit:
            raise ParseError(f"host config {path} does not exist") from None
        return HostSettings()
    except UnicodeDecodeError:
        raise ParseError(f"host config {path} is not UTF-8 text") from None
    except OSError as exc:
        raise ParseError(f"host config {path}: {exc.strerror}") from None
    return parse_settings(text)
