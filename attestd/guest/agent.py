"""The agent: cvm-control's bootstrap, state record, recovery and passphrase rotation."""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import json
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from attestd.guest import fs, luks
from attestd.guest.errors import (
    AuthenticationFailed,
    CommandFailed,
    ConflictError,
    GuestError,
    PayloadError,
)
from attestd.guest.payload import (
    Payload,
    RotateSpec,
    VolumeSpec,
    validate_record_volume,
    validate_user_id,
)
from attestd.guest.runner import CommandRunner

logger = logging.getLogger(__name__)

STATE_FILE = "bootstrap.json"
LOCK_FILE = "lock"
KEY_FILE = "input.key"
KEY_BYTES = 32
STATE_VERSION = 1
STATUS_BOOTSTRAP = "bootstrap"
STATUS_READY = "ready"
STATUS_SHUTDOWN = "shutdown"
DEFAULT_RUN_DIR = Path("/run/attestd")
DEFAULT_DEV_DIR = Path("/dev")
DEFAULT_MOUNTINFO = Path("/proc/self/mountinfo")


@dataclass(frozen=True, slots=True)
class GuestConfig:
    """Where things are. Tests point the paths into a temporary directory and pass
    cheap ``pbkdf_args``; production uses the defaults. ``device_timeout`` is how long
    to wait for a device node or by-id link to appear."""

    run_dir: Path = DEFAULT_RUN_DIR
    dev_dir: Path = DEFAULT_DEV_DIR
    mountinfo: Path = DEFAULT_MOUNTINFO
    mount_root: Path = Path("/")
    pbkdf_args: tuple[str, ...] = ()
    allow_regular_files: bool = False
    device_timeout: float = 0.0
    poweroff_argv: tuple[str, ...] = ("systemctl", "poweroff")
    reboot_argv: tuple[str, ...] = ("systemctl", "reboot")

    @property
    def mapper_dir(self) -> Path:
        """``/dev/mapper``."""
        return self.dev_dir / "mapper"

    @property
    def by_id_dir(self) -> Path:
        """``/dev/disk/by-id``."""
        return self.dev_dir / "disk" / "by-id"

    @property
    def state_file(self) -> Path:
        """``<run-dir>/bootstrap.json``."""
        return self.run_dir / STATE_FILE

    @property
    def key_file(self) -> Path:
        """``<run-dir>/input.key``: the HMAC key of the state record's ``input_mac``."""
        return self.run_dir / KEY_FILE

    def mount_path(self, mount_point: str) -> Path:
        """Where ``mount_point`` is in this process's view (``mount_root`` prefixed)."""
        return self.mount_root / mount_point.lstrip("/")


@dataclass(slots=True)
class VolumeResult:
    """One volume's outcome."""

    status: str = "ok"
    error: str = ""
    detail: str = ""
    actions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True on success."""
        return self.status == "ok"

    def api(self) -> dict[str, str]:
        """cvm-control's per-volume shape."""
        out = {"status": self.status}
        if not self.ok:
            out["error"] = self.error
            if self.detail:
                out["detail"] = self.detail
        return out

    def full(self) -> dict[str, Any]:
        """The API shape plus what was done (CLI output)."""
        return {**self.api(), "actions": list(self.actions), "warnings": list(self.warnings)}


@dataclass(frozen=True, slots=True)
class OperationResult:
    """The outcome of a bootstrap or rotation over all volumes."""

    volumes: Mapping[str, VolumeResult]

    @property
    def ok(self) -> bool:
        """True when every volume succeeded."""
        return all(v.ok for v in self.volumes.values())

    def api(self) -> dict[str, Any]:
        """cvm-control's ``completed``/``failed`` document."""
        if self.ok:
            return {"status": "completed", "volumes": {n: v.api() for n, v in self.volumes.items()}}
        return {
            "status": "failed",
            "error": "one or more volumes failed",
            "volumes": {n: v.api() for n, v in self.volumes.items()},
        }

    def full(self) -> dict[str, Any]:
        """The API document with per-volume actions."""
        return {**self.api(), "volumes": {n: v.full() for n, v in self.volumes.items()}}


def _run_each(
    names: list[str], work: Callable[[str, VolumeResult], None]
) -> dict[str, VolumeResult]:
    """Run ``work`` for every volume in its own thread; one failure never stops another."""
    results = {name: VolumeResult() for name in names}

    def one(name: str) -> None:
        res = results[name]
        try:
            work(name, res)
        except GuestError as exc:
            res.status, res.error, res.detail = "error", exc.message, exc.detail
        except Exception as exc:  # fail closed per volume, keep the others going
            logger.exception("volume %s: unexpected error", name)
            res.status, res.error, res.detail = "error", "internal error", type(exc).__name__
        if res.ok:
            logger.info("volume %s: ok (%s)", name, ", ".join(res.actions))
        else:
            logger.error("volume %s: %s", name, res.error)

    if names:
        with ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="volume") as pool:
            list(pool.map(one, names))
    return results


def _env_line(key: str, value: str) -> str:
    """``KEY="value"`` with the escapes both systemd and sh understand."""
    escaped = "".join("\\" + c if c in '\\"$`' else c for c in value)
    return f'{key}="{escaped}"\n'


def _write_file(path: Path, text: str, mode: int) -> None:
    """Atomically replace ``path`` with ``text`` and exactly ``mode``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _ensure_dir(path: Path, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)


def _read_key(path: Path) -> bytes | None:
    """The input key, or None when it is missing or malformed."""
    try:
        text = path.read_text(encoding="ascii").strip()
        key = bytes.fromhex(text)
    except FileNotFoundError:
        return None
    except ValueError:  # not hex, not ASCII
        return None
    return key if len(key) == KEY_BYTES else None


def _input_key(path: Path) -> bytes:
    """The input key (hex, 0600), made once with ``os.urandom``. Only bootstrap calls
    this, under the run-directory lock; a malformed key is replaced, so records made
    with it no longer match (fails closed: a conflict, never a false ready)."""
    key = _read_key(path)
    if key is None:
        key = os.urandom(KEY_BYTES)
        _write_file(path, key.hex() + "\n", 0o600)
    return key


def _check_record(raw: Mapping[str, Any]) -> None:
    """A state record read back from disk obeys the rules its payload did.

    ``input_mac`` is optional: records written before it existed lack it.
    """
    fields = {"version", "user_id", "fingerprint", "volumes"}
    if set(raw) not in (fields, fields | {"input_mac"}):
        raise PayloadError("unexpected fields")
    validate_user_id(raw["user_id"])
    if not isinstance(raw["fingerprint"], str):
        raise PayloadError("invalid fingerprint")
    mac = raw.get("input_mac", "0" * 64)
    if not isinstance(mac, str) or len(mac) != 64 or not set(mac) <= set("0123456789abcdef"):
        raise PayloadError("invalid input_mac")
    volumes = raw["volumes"]
    if not isinstance(volumes, dict):
        raise PayloadError("volumes must be an object")
    for name, vol in volumes.items():
        validate_record_volume(name, vol)


class Agent:
    """Bootstrap, recovery and rotation; thread-safe, one operation at a time."""

    def __init__(self, config: GuestConfig, runner: CommandRunner) -> None:
        self.config = config
        self.runner = runner
        self.status = STATUS_BOOTSTRAP
        self.record: dict[str, Any] | None = None
        self._lock = threading.Lock()

    # -- state -------------------------------------------------------------------------

    def load_record(self) -> dict[str, Any] | None:
        """The saved state record, or None (a corrupt record counts as none)."""
        try:
            raw = json.loads(self.config.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable state record: %s", exc)
            return None
        if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
            logger.warning("ignoring state record of unknown version")
            return None
        try:
            _check_record(raw)
        except PayloadError as exc:
            logger.warning("ignoring malformed state record: %s", exc.message)
            return None
        return raw

    def volumes_mounted(self, record: Mapping[str, Any]) -> dict[str, bool]:
        """For each recorded volume, whether its mount point is mounted now."""
        points = fs.mounted_points(self.config.mountinfo)
        return {
            name: os.path.normpath(self.config.mount_path(vol["mount_point"])) in points
            for name, vol in record.get("volumes", {}).items()
        }

    def recover(self) -> bool:
        """Back to ``ready`` without secrets when the record's volumes are all mounted."""
        record = self.load_record()
        if record is None:
            return False
        mounted = self.volumes_mounted(record)
        if not all(mounted.values()):
            missing = sorted(n for n, m in mounted.items() if not m)
            logger.warning("state record found but not mounted: %s", ", ".join(missing))
            return False
        with self._lock:
            self.record, self.status = record, STATUS_READY
        logger.info("recovered to ready from %s", self.config.state_file)
        return True

    def describe(self) -> dict[str, Any]:
        """Status plus recorded volumes and whether each is mounted (CLI ``status``)."""
        record = self.record or self.load_record()
        out: dict[str, Any] = {"status": self.status}
        if record is not None:
            mounted = self.volumes_mounted(record)
            out["user_id"] = record.get("user_id")
            out["volumes"] = {
                name: {**vol, "mounted": mounted[name]}
                for name, vol in record.get("volumes", {}).items()
            }
        return out

    def check_bootstrap(self, payload: Payload) -> bool:
        """True when ``payload`` is the one already bootstrapped (nothing to do).

        Raises ConflictError for different input while ready or after shutdown.
        """
        if self.status == STATUS_SHUTDOWN:
            raise ConflictError("the agent is shutting down")
        record = self.record or self.load_record()
        if record is None:
            return False
        mounted = self.volumes_mounted(record)
        if not all(mounted.values()):
            return False
        if not self.same_input(record, payload):
            raise ConflictError("already bootstrapped with a different configuration")
        self.record, self.status = record, STATUS_READY
        return True

    def same_input(self, record: Mapping[str, Any], payload: Payload) -> bool:
        """Whether ``payload`` is the request ``record`` was saved for, secrets included.

        A record without ``input_mac`` (older versions) compares the public part only.
        Without a readable key the input cannot be proven the same: False.
        """
        mac = record.get("input_mac")
        if mac is None:
            return bool(record.get("fingerprint") == payload.public_fingerprint())
        try:
            key = _read_key(self.config.key_file)
        except OSError as exc:
            logger.warning("cannot read %s: %s", self.config.key_file, exc.strerror)
            return False
        if key is None:
            logger.warning("%s is missing or malformed", self.config.key_file)
            return False
        return hmac.compare_digest(bytes.fromhex(mac), payload.full_digest(key))

    # -- bootstrap ---------------------------------------------------------------------

    def write_files(self, payload: Payload) -> None:
        """env files (0644), secret files (0600) and ``user_id.env`` under the run dir."""
        run = self.config.run_dir
        _ensure_dir(run, 0o755)
        _ensure_dir(run / "env", 0o755)
        _ensure_dir(run / "secret", 0o700)
        for sub, files, mode in (("env", payload.env, 0o644), ("secret", payload.secret, 0o600)):
            for name, values in files.items():
                if os.path.basename(name) != name or name.startswith("."):
                    raise PayloadError(f"invalid file name {name!r}")
                text = "".join(_env_line(k, v) for k, v in values.items())
                _write_file(run / sub / name, text, mode)
        _write_file(run / "user_id.env", _env_line("CVM_USER_ID", payload.user_id), 0o644)

    def resolve_device(self, device: str) -> str:
        """``virtio:<serial>`` via ``/dev/disk/by-id/virtio-<serial>``, or a ``/dev`` path."""
        if device.startswith("virtio:"):
            path = self.config.by_id_dir / f"virtio-{device.removeprefix('virtio:')}"
        else:
            path = self.config.dev_dir / device.removeprefix("/dev/")
        deadline = time.monotonic() + self.config.device_timeout
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.25)  # udev may still be creating the link
        try:
            real = path.resolve(strict=True)
            mode = real.stat().st_mode
        except (OSError, RuntimeError) as exc:
            raise CommandFailed("device not found", str(path)) from exc
        if stat.S_ISBLK(mode) or (self.config.allow_regular_files and stat.S_ISREG(mode)):
            return str(real)
        raise CommandFailed("not a block device", str(real))

    def _bootstrap_volume(self, vol: VolumeSpec, res: VolumeResult) -> None:
        cfg, run = self.config, self.runner
        mount_path = cfg.mount_path(vol.mount_point)
        if fs.is_mounted(cfg.mountinfo, mount_path):
            res.actions.append("already-mounted")
            return
        mapper = cfg.mapper_dir / vol.name
        if mapper.exists():
            res.actions.append("mapper-exists")
        else:
            device = self.resolve_device(vol.device)
            existing = luks.is_luks(run, device)
            if existing and not luks.is_luks2(run, device):
                raise CommandFailed("device holds a LUKS1 volume; only LUKS2 is supported")
            if not existing:
                found = fs.signature(run, device)
                if found is not None:
                    raise CommandFailed(f"device holds a {found} signature; refusing to format")
                luks.luks_format(run, device, vol.passphrase, cfg.pbkdf_args)
                res.actions.append("luks-formatted")
            luks.luks_open(run, device, vol.name, vol.passphrase)
            res.actions.append("opened")
            if existing:
                try:
                    removed, warnings = luks.remove_stale_keyslots(run, device, vol.passphrase)
                except CommandFailed as exc:
                    removed, warnings = [], [f"keyslot clean-up: {exc.message}"]
                res.warnings.extend(warnings)
                if removed:
                    res.actions.append("removed-keyslots:" + ",".join(map(str, removed)))
        plain = str(mapper)
        found = fs.signature(run, plain)
        if found is None:
            fs.mkfs(run, plain, vol.name)
            res.actions.append("mkfs")
        elif found in fs.EXT_TYPES:
            if fs.fsck(run, plain):
                res.actions.append("fsck-repaired")
            if fs.resize(run, plain):
                res.actions.append("resized")
        else:
            raise CommandFailed(f"unsupported filesystem {found}")
        fs.mount(run, plain, mount_path)
        res.actions.append("mounted")

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One operation at a time: in this process and across processes sharing the
        run directory (``bootstrap`` from the unit while ``serve`` runs, two CLIs)."""
        if not self._lock.acquire(blocking=False):
            raise ConflictError("another operation is in progress")
        try:
            run_dir = self.config.run_dir
            try:
                _ensure_dir(run_dir, 0o755)
                fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise GuestError(f"cannot write files under {run_dir}: {exc.strerror}") from exc
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError as exc:
                    msg = "another attestd-guest process is running an operation"
                    raise ConflictError(msg) from exc
                yield
            finally:
                os.close(fd)
        finally:
            self._lock.release()

    def bootstrap(self, payload: Payload) -> OperationResult:
        """Run cvm-control's bootstrap; on full success save the record and become ready."""
        with self._exclusive():
            if self.check_bootstrap(payload):
                return OperationResult(
                    {n: VolumeResult(actions=["ready"]) for n in payload.volumes}
                )
            try:
                self.write_files(payload)
                input_mac = payload.full_digest(_input_key(self.config.key_file)).hex()
            except OSError as exc:
                run_dir = self.config.run_dir
                raise GuestError(f"cannot write files under {run_dir}: {exc.strerror}") from exc
            results = _run_each(
                list(payload.volumes),
                lambda name, res: self._bootstrap_volume(payload.volumes[name], res),
            )
            outcome = OperationResult(results)
            if outcome.ok:
                self._save_record(payload, input_mac)
            return outcome

    def _save_record(self, payload: Payload, input_mac: str) -> None:
        record = {
            "version": STATE_VERSION,
            "user_id": payload.user_id,
            "fingerprint": payload.public_fingerprint(),
            "input_mac": input_mac,
            "volumes": {name: vol.public() for name, vol in payload.volumes.items()},
        }
        _write_file(self.config.state_file, json.dumps(record, indent=2) + "\n", 0o600)
        self.record, self.status = record, STATUS_READY

    # -- rotation ----------------------------------------------------------------------

    def _recorded_device(self, name: str) -> str:
        if self.record is None or name not in self.record.get("volumes", {}):
            raise PayloadError(f"unknown volume {name!r}")
        return self.resolve_device(self.record["volumes"][name]["device"])

    def authenticate_rotation(self, specs: Mapping[str, RotateSpec]) -> None:
        """Require ``ready`` and that every old passphrase opens its volume (401 otherwise)."""
        if self.status != STATUS_READY:
            raise ConflictError(f"rotation needs status ready, not {self.status}")
        devices = {name: self._recorded_device(name) for name in specs}
        outcome: dict[str, bool] = {}

        def check(name: str, res: VolumeResult) -> None:
            outcome[name] = luks.test_passphrase(self.runner, devices[name], specs[name].old)

        failed = {n: r for n, r in _run_each(list(specs), check).items() if not r.ok}
        if failed:
            name, res = next(iter(failed.items()))
            raise CommandFailed(f"volume {name}: {res.error}", res.detail)
        bad = sorted(n for n, ok in outcome.items() if not ok)
        if bad:
            raise AuthenticationFailed(f"old passphrase is invalid for: {', '.join(bad)}")

    def rotate(self, specs: Mapping[str, RotateSpec]) -> OperationResult:
        """Add each new passphrase as a keyslot (idempotent; old slots stay)."""
        with self._exclusive():
            self.authenticate_rotation(specs)

            def work(name: str, res: VolumeResult) -> None:
                spec, device = specs[name], self._recorded_device(name)
                if spec.old == spec.new:
                    res.actions.append("unchanged")
                elif luks.test_passphrase(self.runner, device, spec.new):
                    res.actions.append("already-present")
                else:
                    luks.add_key(self.runner, device, spec.old, spec.new, self.config.pbkdf_args)
                    res.actions.append("keyslot-added")

            return OperationResult(_run_each(list(specs), work))
