"""Per-launch host state, handed from the hook to the wrapper or the agent.

One JSON file per domain UUID under ``state_dir`` (default ``/run/attestd/host``).
It holds only public values: the launch id, the policy, where the service is and,
in simulated mode, the GODH certificate and session blob the simulator needs (the
transport keys inside the session are wrapped for the platform's PDH). TEK and
TIK never reach the host.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from uuid import UUID

from attestd.errors import ParseError

PATH_WRAPPER = "wrapper"
PATH_AGENT = "agent"
#: Environment variable libvirt sets for a wrapped attestd domain's emulator (from the
#: ``<qemu:env>`` that ``prepare-domain`` adds; value: the VM id). ``attestd-qemu``
#: refuses to start a marked domain without a valid launch state (fail closed).
MARKER_ENV = "ATTESTD_DOMAIN"


@dataclass(frozen=True, slots=True)
class LaunchState:
    """One launch of one domain, as recorded at ``start begin``."""

    domain: str
    domain_uuid: str
    domain_id: int
    vm_id: str
    service: str
    launch_id: str
    policy: int
    path: str
    simulate: bool
    firmware: str | None = None
    sim_state: str | None = None
    cpu_count: int | None = None
    vcpu_type: str | None = None
    godh_cert: str | None = None
    session: str | None = None
    #: simulated mode: the unix socket of the guest's simulated secret area port
    sim_secret_socket: str | None = None

    @property
    def vm_uuid(self) -> UUID:
        """The service-side VM id."""
        return UUID(self.vm_id)

    def sim_blobs(self) -> tuple[bytes, bytes]:
        """GODH certificate and session blob (simulated mode only)."""
        if self.godh_cert is None or self.session is None:
            raise ParseError("launch state has no simulator session")
        try:
            return base64.b64decode(self.godh_cert), base64.b64decode(self.session)
        except (ValueError, binascii.Error) as exc:
            raise ParseError("launch state session is not base64") from exc

    def to_json(self) -> str:
        """Serialise (stable key order)."""
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> LaunchState:
        """Parse a state file."""
        try:
            doc = json.loads(text)
            return cls(**doc)
        except (ValueError, TypeError) as exc:
            raise ParseError(f"launch state does not parse: {exc}") from exc


def state_file(state_dir: Path, domain_uuid: UUID | str) -> Path:
    """Where the state of a domain's current launch lives."""
    return state_dir / f"{UUID(str(domain_uuid))}.json"


def write_state(state_dir: Path, state: LaunchState) -> Path:
    """Atomically write the state (readable by the QEMU user, writable by root only)."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    path = state_file(state_dir, state.domain_uuid)
    tmp = path.with_name(path.name + f".{os.getpid()}.new")
    tmp.write_text(state.to_json(), encoding="utf-8")
    tmp.chmod(0o644)
    tmp.replace(path)
    return path


def read_state(state_dir: Path, domain_uuid: UUID | str) -> LaunchState | None:
    """The domain's launch state, or None when it is not an attestd launch."""
    try:
        text = state_file(state_dir, domain_uuid).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return LaunchState.from_json(text)


def remove_state(state_dir: Path, domain_uuid: UUID | str) -> None:
    """Forget a launch (domain stopped): its state and the agent's done marker."""
    path = state_file(state_dir, domain_uuid)
    path.unlink(missing_ok=True)
    done_marker(state_dir, domain_uuid).unlink(missing_ok=True)


def done_marker(state_dir: Path, domain_uuid: UUID | str) -> Path:
    """Holds the launch id the agent attested (one attestation per launch)."""
    return state_file(state_dir, domain_uuid).with_suffix(".done")
