"""``attestd-qemu``: the emulator wrapper that makes a plain ``virsh start`` attest.

For any invocation that is not the launch of an attestd domain (capability
probing, ``-version``, other domains) it execs the real QEMU unchanged. A domain
prepared by ``attestd-host prepare-domain`` is *marked*: libvirt sets
``ATTESTD_DOMAIN=<vm-id>`` in the emulator's environment (``<qemu:env>``). A marked
domain without a valid launch state from the hook (hook not installed or not run,
stale state) is refused, so it never runs unattested. For an attestd domain (the
hook left a launch state for its ``-uuid``) it:

1. creates a private QMP socket next to libvirt's ``monitor.sock`` and gives that
   one to QEMU in place of libvirt's monitor fd;
2. forks the relay, which keeps libvirt's listening fd and relays every
   connection to QEMU, holding the first ``cont`` until the launch driver has
   measured, validated and injected;
3. execs the real QEMU, so libvirt sees QEMU under the PID it started.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from uuid import UUID

from attestd.console import EXIT_STATUS_EPILOG, plain, run_guarded
from attestd.errors import AttestdError, LaunchError
from attestd.host.config import HostSettings, load_settings
from attestd.host.state import MARKER_ENV, PATH_WRAPPER, LaunchState, read_state

logger = logging.getLogger("attestd.host.wrapper")

RELAY_SOCKET_NAME = "attestd-qmp.sock"
PR_SET_PDEATHSIG = 1

# Only the standard library and light attestd modules are imported here: libvirt
# runs the emulator for capability probing, and a pass-through must stay fast.


def option_value(argv: Sequence[str], option: str) -> str | None:
    """The value following ``option`` in a QEMU argv (last occurrence)."""
    value = None
    for i, arg in enumerate(argv[:-1]):
        if arg == option:
            value = argv[i + 1]
    return value


def _props(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in value.split(","):
        key, _, val = part.partition("=")
        out.setdefault(key, val)
    return out


def monitor_chardev(argv: Sequence[str]) -> tuple[int, int] | None:
    """(argv index, fd) of libvirt's ``-chardev socket,id=charmonitor,fd=N,...``."""
    for i, arg in enumerate(argv[:-1]):
        if arg != "-chardev":
            continue
        value = argv[i + 1]
        if not value.startswith("socket,"):
            continue
        props = _props(value)
        if props.get("id") == "charmonitor" and props.get("fd", "").isdigit():
            return i + 1, int(props["fd"])
    return None


def guest_name(argv: Sequence[str]) -> str | None:
    """The domain name from ``-name guest=NAME,...``."""
    value = option_value(argv, "-name")
    if value is None:
        return None
    first = value.split(",", 1)[0]
    return first.removeprefix("guest=")


def replace_fd(chardev: str, fd: int) -> str:
    """The chardev option with its ``fd=`` replaced."""
    parts = [f"fd={fd}" if p.startswith("fd=") else p for p in chardev.split(",")]
    return ",".join(parts)


def _set_pdeathsig() -> None:
    """Let the relay die with QEMU (its parent after the exec)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _exec_qemu(settings: HostSettings, argv: Sequence[str]) -> None:
    binary = str(settings.qemu_binary)
    os.execv(binary, [binary, *argv])  # noqa: S606 - argv list, no shell


def _configure_logging() -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s attestd-qemu[%(process)d] %(levelname)s %(message)s",
    )


def _refuse(message: str) -> int:
    print(f"attestd-qemu: {message}", file=sys.stderr)
    return 1


def _check_marked(args: Sequence[str], marker: str, state: LaunchState | None) -> str | None:
    """Why a marked domain must not start (None: it has a launch state for the wrapper)."""
    name = guest_name(args)
    if state is None:
        return (
            f"{name} is an attestd domain ({MARKER_ENV}={marker}) but has no launch state: "
            "is the attestd hook installed (attestd-host install-hook) and libvirtd restarted? "
            "Refusing to run it unattested"
        )
    if state.path != PATH_WRAPPER:
        return f"launch state of {name} is for the host agent, not attestd-qemu"
    if state.vm_id != marker:
        return f"launch state is for VM {state.vm_id}, the domain is marked for {marker}"
    return None


HELP = f"""usage: attestd-qemu [QEMU ARGUMENTS...]

{plain(__doc__).strip()}

Every argument goes to QEMU (the host config's qemu_binary); 'attestd-qemu -help'
shows QEMU's own help. The host config is /etc/attestd/host.toml, or
$ATTESTD_HOST_CONFIG.

{EXIT_STATUS_EPILOG}
  otherwise QEMU's own exit status
"""


def _is_uuid(text: str) -> bool:
    try:
        UUID(text)
    except ValueError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``attestd-qemu``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--help"]:
        sys.stdout.write(HELP)
        return 0
    return run_guarded("attestd-qemu", lambda: _run(args))


def _run(args: list[str]) -> int:
    uuid = option_value(args, "-uuid")
    monitor = monitor_chardev(args)
    marker = os.environ.get(MARKER_ENV) or None
    if marker is not None and not _is_uuid(marker):
        return _refuse(f"{MARKER_ENV}={marker!r} is not a VM id (UUID): run prepare-domain again")
    if uuid is not None and not _is_uuid(uuid):
        uuid = None  # not libvirt's: no attestd launch state can belong to it
    if uuid is None or monitor is None:
        if marker is not None:
            return _refuse(f"{MARKER_ENV} is set but libvirt's -uuid/monitor chardev is missing")
        _exec_qemu(load_settings_or_default(), args)
        return 127  # pragma: no cover - execv does not return
    try:
        settings = load_settings()
        state = read_state(settings.state_dir, uuid)
    except AttestdError as exc:
        return _refuse(exc.message)
    if marker is not None:
        reason = _check_marked(args, marker, state)
        if reason is not None:
            return _refuse(reason)
    if state is None or state.path != PATH_WRAPPER:
        _exec_qemu(settings, args)
        return 127  # pragma: no cover
    _configure_logging()
    if guest_name(args) != state.domain:
        return _refuse(f"launch state is for {state.domain!r}, not {guest_name(args)!r}")
    index, libvirt_fd = monitor
    try:
        listener = socket.socket(fileno=libvirt_fd)
        libvirt_path = listener.getsockname()
        if not isinstance(libvirt_path, str) or not libvirt_path:
            raise LaunchError("libvirt's monitor fd is not a unix socket with a path")
        # libvirt's monitor lives in <libDir>/domain-<id>-<name>/: the state must be this launch's
        if not Path(libvirt_path).parent.name.startswith(f"domain-{state.domain_id}-"):
            raise LaunchError(
                f"stale launch state (domain id {state.domain_id}, monitor {libvirt_path})"
            )
        qemu_path = str(Path(libvirt_path).with_name(RELAY_SOCKET_NAME))
        Path(qemu_path).unlink(missing_ok=True)
        private = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        private.bind(qemu_path)
        os.chmod(qemu_path, 0o600)
        private.listen(4)
    except (OSError, LaunchError) as exc:
        print(f"attestd-qemu: cannot set up the QMP relay: {exc}", file=sys.stderr)
        return 1
    logger.info(
        "domain=%s launch=%s: relaying QMP %s -> %s",
        state.domain,
        state.launch_id,
        libvirt_path,
        qemu_path,
    )
    pid = os.fork()
    if pid == 0:  # the relay
        code = 0
        try:
            _set_pdeathsig()
            private.close()
            from attestd.host.relay import run_relay  # heavy imports only in the relay

            run_relay(settings, state, listener, qemu_path)
        except BaseException:
            logger.exception("relay failed")
            code = 1
        finally:
            os._exit(code)
    listener.close()
    os.set_inheritable(private.fileno(), True)
    args[index] = replace_fd(args[index], private.fileno())
    _exec_qemu(settings, args)
    return 127  # pragma: no cover


def load_settings_or_default() -> HostSettings:
    """Settings for a pass-through exec: a broken config must not break other domains."""
    try:
        return load_settings()
    except AttestdError:
        return HostSettings()


if __name__ == "__main__":
    sys.exit(main())
