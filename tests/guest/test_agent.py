"""The whole bootstrap flow with the real tools on files and loop devices.

Only ``cryptsetup open`` is emulated (``LoopMapperRunner``): this kernel has no
device-mapper. The QEMU end-to-end test runs the unmodified flow.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import uuid
from pathlib import Path

import pytest

from attestd.guest import cli, luks
from attestd.guest.agent import Agent
from attestd.guest.errors import AuthenticationFailed, CommandFailed, ConflictError, GuestError
from attestd.guest.payload import PAYLOAD_GUID, RotateSpec, validate
from attestd.guest.runner import SubprocessRunner
from tests.guest.conftest import Guest
from tests.guest.helpers import (
    CHEAP_PBKDF,
    RecordingRunner,
    luks_format_file,
    payload_bytes,
    payload_doc,
    payload_table,
    sh,
)


def _doc() -> dict[str, object]:
    return payload_doc(
        data={"device": "virtio:data", "passphrase": "pw-data", "mount_point": "/srv/data"},
        logs={"device": "virtio:logs", "passphrase": "pw-logs"},
    )


def _cli(guest: Guest, *argv: str, runner: object = None) -> tuple[int, dict[str, object]]:
    """Run ``attestd-guest`` in-process with the guest layout and runner injected."""
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setattr(cli, "config_from_args", lambda _args: guest.config)
        mp.setattr(cli, "SubprocessRunner", lambda **_kw: runner or guest.runner)
        code = cli.main(list(argv))
    return code, json.loads(out.getvalue())


def test_bootstrap_then_reboot_grow_and_stale_slot(guest: Guest) -> None:
    data = guest.disk("data")
    guest.disk("logs")
    payload = validate(_doc())
    agent = guest.agent()
    result = agent.bootstrap(payload)
    assert result.ok, result.full()
    assert result.volumes["data"].actions == ["luks-formatted", "opened", "mkfs", "mounted"]
    mnt = guest.config.mount_path("/srv/data")
    (mnt / "marker").write_text("kept")
    size_before = os.statvfs(mnt).f_blocks * os.statvfs(mnt).f_frsize
    assert agent.status == "ready"

    # files: env 0644, secret 0600, user_id.env; systemd/sh quoting
    run = guest.config.run_dir
    assert stat.S_IMODE(os.stat(run / "env" / "app.env").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(run / "secret" / "credentials.env").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(run / "secret").st_mode) == 0o700
    assert (run / "user_id.env").read_text() == 'CVM_USER_ID="owner-42"\n'
    env = (run / "env" / "app.env").read_text()
    assert env == 'APP_MODE="production"\nQUOTE="a \\"b\\" \\$c"\n'
    assert sh("sh", "-c", f'. {run / "env" / "app.env"}; printf %s "$QUOTE"') == 'a "b" $c'
    record = json.loads((run / "bootstrap.json").read_text())
    assert record["user_id"] == "owner-42" and "pw-data" not in json.dumps(record)

    # same input again: a no-op; different input: refused
    again = guest.agent().bootstrap(payload)
    assert again.ok and again.volumes["data"].actions == ["ready"]
    other = _doc()
    other["volumes"]["logs"]["mount_point"] = "/elsewhere"  # type: ignore[index]
    with pytest.raises(ConflictError):
        guest.agent().bootstrap(validate(other))

    # "reboot": unmount, grow the data disk, add a stale keyslot to logs
    guest.unmount_all()
    with data.open("r+b") as fh:
        fh.truncate(80 << 20)
    logs_dev = str(guest.config.by_id_dir / "virtio-logs")
    luks.add_key(SubprocessRunner(), logs_dev, b"pw-logs", b"stale", CHEAP_PBKDF)
    (run / "bootstrap.json").unlink()
    fresh = guest.agent()
    assert not fresh.recover()
    result = fresh.bootstrap(payload)
    assert result.ok, result.full()
    assert result.volumes["data"].actions == ["opened", "resized", "mounted"]
    assert result.volumes["logs"].actions == ["opened", "removed-keyslots:1", "mounted"]
    assert (mnt / "marker").read_text() == "kept"
    assert luks.keyslots(SubprocessRunner(), logs_dev) == [0]
    df = os.statvfs(mnt)
    assert df.f_blocks * df.f_frsize > size_before + (24 << 20)

    # restart recovery without secrets
    recovered = guest.agent()
    assert recovered.recover() and recovered.status == "ready"
    assert recovered.describe()["volumes"]["data"]["mounted"] is True


def test_failure_is_per_volume(guest: Guest) -> None:
    guest.disk("data")
    bad = guest.disk("logs")
    luks_format_file(bad, b"someone-else")
    result = guest.agent().bootstrap(validate(_doc()))
    assert not result.ok
    assert result.volumes["data"].ok and "mounted" in result.volumes["data"].actions
    assert result.volumes["logs"].api()["error"].startswith("luksOpen failed")
    assert result.api()["error"] == "one or more volumes failed"
    assert not (guest.config.run_dir / "bootstrap.json").exists()
    # the wrong-passphrase disk keeps its only slot
    assert luks.keyslots(SubprocessRunner(), str(bad)) == [0]


def test_refuses_to_format_foreign_data(guest: Guest) -> None:
    disk = guest.disk("data")
    guest.disk("logs")
    sh("mkfs.ext4", "-q", "-F", str(disk))
    result = guest.agent().bootstrap(validate(_doc()))
    assert result.volumes["data"].error == "device holds a ext4 signature; refusing to format"
    assert result.volumes["logs"].ok
    assert not any(c[1] == "luksFormat" for c in guest.runner.calls if str(disk) in c)


def test_missing_device(guest: Guest) -> None:
    guest.disk("data")
    result = guest.agent().bootstrap(validate(_doc()))
    assert result.volumes["logs"].api() == {
        "status": "error",
        "error": "device not found",
        "detail": str(guest.config.by_id_dir / "virtio-logs"),
    }
    assert result.volumes["data"].ok


def test_rotation(guest: Guest) -> None:
    guest.disk("data")
    guest.disk("logs")
    agent = guest.agent()
    with pytest.raises(ConflictError):
        agent.rotate({"data": RotateSpec("data", b"pw-data", b"new")})
    assert agent.bootstrap(validate(_doc())).ok
    with pytest.raises(AuthenticationFailed):
        agent.rotate({"data": RotateSpec("data", b"wrong", b"new")})
    specs = {
        "data": RotateSpec("data", b"pw-data", b"new-data"),
        "logs": RotateSpec("logs", b"pw-logs", b"pw-logs"),
    }
    result = agent.rotate(specs)
    assert result.ok
    assert result.volumes["data"].actions == ["keyslot-added"]
    assert result.volumes["logs"].actions == ["unchanged"]
    assert agent.rotate(specs).volumes["data"].actions == ["already-present"]
    dev = str(guest.config.by_id_dir / "virtio-data")
    assert luks.keyslots(SubprocessRunner(), dev) == [0, 1]
    # roles swapped: the old passphrase is authenticated by the new one and already opens
    swapped = {"data": RotateSpec("data", b"new-data", b"pw-data")}
    assert agent.rotate(swapped).volumes["data"].actions == ["already-present"]


def test_cli_bootstrap_consumes_secret_and_status(guest: Guest) -> None:
    guest.disk("data")
    guest.disk("logs")
    entry = guest.secrets / PAYLOAD_GUID
    entry.write_bytes(payload_bytes(_doc()))
    other = guest.secrets / "736869e5-84f0-4973-92ec-06879ce3da0b"
    other.write_bytes(b"grub\0")
    code, out = _cli(guest, "bootstrap", "--secrets-dir", str(guest.secrets))
    assert code == cli.EXIT_OK and out["status"] == "ready"
    assert not entry.exists() and other.exists()
    code, out = _cli(guest, "status")
    assert code == 0 and out["status"] == "ready" and out["user_id"] == "owner-42"

    # rotate through the CLI (old passphrase must authenticate)
    req = guest.root / "rotate.json"
    req.write_text(
        json.dumps({"volumes": {"data": {"old_passphrase": "x", "new_passphrase": "y"}}})
    )
    code, out = _cli(guest, "rotate", str(req))
    assert code == cli.EXIT_AUTH and out["code"] == "authentication_failed"


def test_cli_failure_keeps_secret(guest: Guest) -> None:
    guest.disk("data")
    table = guest.root / "table.bin"
    table.write_bytes(payload_table(_doc()))
    entry = guest.secrets / PAYLOAD_GUID
    entry.write_bytes(payload_bytes(_doc()))
    code, out = _cli(guest, "bootstrap", "--secrets-dir", str(guest.secrets))
    assert code == cli.EXIT_VOLUMES_FAILED and out["status"] == "failed"
    assert entry.exists()
    assert out["volumes"]["data"]["status"] == "ok"  # type: ignore[index]


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        payload_bytes({**_doc(), "version": 2}),
        payload_bytes({k: v for k, v in _doc().items() if k != "user_id"}),
        payload_bytes({**_doc(), "env": {"../../etc/cron.d/x": {"A": "b"}}}),
        payload_bytes(
            {
                **_doc(),
                "volumes": {
                    "data": {"device": "/dev/vdb", "passphrase": "p", "mount_point": "/etc"}
                },
            }
        ),
        b" " * 30000,
    ],
)
def test_cli_malformed_payload_touches_nothing(guest: Guest, raw: bytes) -> None:
    rec = RecordingRunner()
    (guest.secrets / PAYLOAD_GUID).write_bytes(raw)
    code, out = _cli(guest, "bootstrap", "--secrets-dir", str(guest.secrets), runner=rec)
    assert code == cli.EXIT_INVALID and out["code"] == "malformed_payload"
    assert rec.calls == []
    assert not guest.config.run_dir.exists()
    assert (guest.secrets / PAYLOAD_GUID).exists()


def test_cli_secret_table_source(guest: Guest) -> None:
    rec = RecordingRunner()
    table = guest.root / "table.bin"
    table.write_bytes(payload_table(_doc())[:-40])
    code, out = _cli(guest, "bootstrap", "--secret-table", str(table), runner=rec)
    assert code == cli.EXIT_INVALID and out["code"] == "secret_source"
    table.write_bytes(b"")
    code, out = _cli(guest, "bootstrap", "--secret-table", str(table), runner=rec)
    assert code == cli.EXIT_INVALID
    code, out = _cli(guest, "bootstrap", "--secrets-dir", str(guest.secrets), runner=rec)
    assert code == cli.EXIT_INVALID and str(uuid.UUID(PAYLOAD_GUID)) in str(out["error"])
    assert rec.calls == []


def test_agent_unused_runner_for_mounted(guest: Guest, tmp_path: Path) -> None:
    """An already-mounted volume is skipped without running anything."""
    info = tmp_path / "mountinfo"
    point = guest.config.mount_path("/srv/data")
    info.write_text(f"1 0 0:1 / {point} rw - ext4 /dev/x rw\n")
    from dataclasses import replace

    rec = RecordingRunner()
    agent = Agent(replace(guest.config, mountinfo=info), rec)
    doc = _doc()
    doc["volumes"] = {"data": doc["volumes"]["data"]}  # type: ignore[index]
    result = agent.bootstrap(validate(doc))
    assert result.ok and result.volumes["data"].actions == ["already-mounted"]
    assert rec.calls == []


def test_waits_for_late_devices(guest: Guest) -> None:
    import threading
    import time
    from dataclasses import replace

    agent = Agent(replace(guest.config, device_timeout=5.0), RecordingRunner())
    timer = threading.Timer(0.4, lambda: guest.disk("late"))
    start = time.monotonic()
    timer.start()
    assert agent.resolve_device("virtio:late") == str(guest.root / "late.img")
    assert 0.3 < time.monotonic() - start < 5
    agent = Agent(replace(guest.config, device_timeout=0.3), RecordingRunner())
    with pytest.raises(CommandFailed, match="device not found"):
        agent.resolve_device("virtio:never")
    (guest.config.dev_dir / "fifo").parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(guest.config.dev_dir / "fifo")
    with pytest.raises(CommandFailed, match="not a block device"):
        Agent(guest.config, RecordingRunner()).resolve_device("/dev/fifo")


def test_unwritable_run_dir_is_a_clean_error(guest: Guest) -> None:
    from dataclasses import replace

    blocker = guest.root / "file"
    blocker.write_text("")
    rec = RecordingRunner()
    agent = Agent(replace(guest.config, run_dir=blocker / "run"), rec)
    with pytest.raises(GuestError, match="cannot write files under"):
        agent.bootstrap(validate(_doc()))
    assert rec.calls == []


def test_cli_rerun_compares_secrets_and_passphrases(guest: Guest) -> None:
    """Issue 5 across processes: each ``bootstrap`` run is a fresh Agent with only the
    run directory in common; a changed passphrase or secret value is a conflict."""
    from attestd.guest.server import Controller

    guest.disk("data")
    guest.disk("logs")
    entry = guest.secrets / PAYLOAD_GUID
    boot = ("bootstrap", "--secrets-dir", str(guest.secrets), "--keep-secrets")
    entry.write_bytes(payload_bytes(_doc()))
    code, out = _cli(guest, *boot)
    assert code == cli.EXIT_OK and out["status"] == "ready"
    run = guest.config.run_dir
    key = run / "input.key"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    record_text = (run / "bootstrap.json").read_text()
    record = json.loads(record_text)
    assert len(record["input_mac"]) == 64
    for value in ("s3cret", "pw-data", "pw-logs", b"pw-data".hex(), b"pw-logs".hex()):
        assert value not in record_text
    secret_file = run / "secret" / "credentials.env"
    assert secret_file.read_text() == 'DB_PASSWORD="s3cret"\n'

    changed_pass = _doc()
    changed_pass["volumes"]["data"]["passphrase"] = "pw-other"  # type: ignore[index]
    changed_secret = _doc()
    changed_secret["secret"] = {"credentials.env": {"DB_PASSWORD": "n3w"}}
    for doc in (changed_pass, changed_secret):
        entry.write_bytes(payload_bytes(doc))
        calls = len(guest.runner.calls)
        code, out = _cli(guest, *boot)
        assert code == cli.EXIT_CONFLICT and out["code"] == "conflict", out
        assert len(guest.runner.calls) == calls  # no disk touched
        assert secret_file.read_text() == 'DB_PASSWORD="s3cret"\n'  # old files kept
    entry.write_bytes(payload_bytes(_doc()))
    code, out = _cli(guest, *boot)
    assert code == cli.EXIT_OK and out["volumes"]["data"]["actions"] == ["ready"]  # type: ignore[index]

    # a restarted serve (recovered from the record) compares the full input as well
    agent = guest.agent()
    assert agent.recover()
    c = Controller(agent)
    assert c.handle("POST", "/api/v1/bootstrap", payload_bytes(changed_pass))[0] == 409
    assert c.handle("POST", "/api/v1/bootstrap", payload_bytes(changed_secret))[0] == 409
    assert c.handle("POST", "/api/v1/bootstrap", payload_bytes(_doc())) == (
        200,
        {"status": "ready"},
    )

    # a lost or damaged key cannot prove the input the same: conflict, never ready
    for damaged in (None, "not hex\n"):
        key.unlink() if damaged is None else key.write_text(damaged)
        code, out = _cli(guest, *boot)
        assert code == cli.EXIT_CONFLICT, out

    # a record from before input_mac: recovery and re-runs work as they did
    del record["input_mac"]
    (run / "bootstrap.json").write_text(json.dumps(record))
    code, out = _cli(guest, "status")
    assert code == cli.EXIT_OK and out["status"] == "ready"
    code, out = _cli(guest, *boot)
    assert code == cli.EXIT_OK and out["status"] == "ready"
