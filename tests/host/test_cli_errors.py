"""``attestd-host`` and ``attestd-qemu`` on bad input (issue 11): one line, a documented
exit status, no traceback; plus the host config rules and ``--no-wrapper``."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from attestd.host.domain import MARKER_ENV, parse_domain
from tests.consoledriver import one_error_line, run_script

UUID1 = "6a9a3a34-5b0e-4b55-9f57-2a4ef0c6e5b1"
SIM_XML = f"""<domain type='qemu'><name>g</name><uuid>{UUID1}</uuid><vcpu>1</vcpu>
<os><type>hvm</type></os><devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>"""
BINARY = bytes(range(256))
SERVICE = "http://127.0.0.1:9/v1"
QEMU_LAUNCH = ["-name", "guest=g", "-uuid", UUID1, "-chardev", "socket,id=charmonitor,fd=3"]


@pytest.fixture
def config(tmp_path: Path) -> dict[str, str]:
    """A host config under ``tmp_path`` (so nothing touches /etc or /var)."""
    path = tmp_path / "host.toml"
    path.write_text(
        f'state_dir = "{tmp_path / "state"}"\nplatform_cache = "{tmp_path / "pc.json"}"\n'
        f'sim_state_dir = "{tmp_path / "sim"}"\nqemu_binary = "/usr/bin/qemu-system-x86_64"\n',
        encoding="utf-8",
    )
    return {"ATTESTD_HOST_CONFIG": str(path)}


def host(*argv: str, env: dict[str, str]) -> str:
    return one_error_line(run_script("attestd-host", *argv, env=env))


def test_binary_and_missing_config(tmp_path: Path, config: dict[str, str]) -> None:
    binary = tmp_path / "binary.toml"
    binary.write_bytes(BINARY)
    line = host("--config", str(binary), "install-hook", "--dir", str(tmp_path), env=config)
    assert line == f"attestd-host: error [malformed_input]: host config {binary} is not UTF-8 text"
    missing = tmp_path / "nonexistent.toml"
    line = host("--config", str(missing), "install-hook", "--dir", str(tmp_path), env=config)
    assert line == f"attestd-host: error [malformed_input]: host config {missing} does not exist"
    assert not (tmp_path / "attestd").exists()  # nothing was installed


def test_refresh_platform_bad_sources(tmp_path: Path, config: dict[str, str]) -> None:
    binary = tmp_path / "state.bin"
    binary.write_bytes(BINARY)
    line = host("refresh-platform", "--source", "sim", "--sim-state", str(binary), env=config)
    assert line.startswith("attestd-host: ") and "Not a directory" in line
    (tmp_path / "simdir").mkdir()
    (tmp_path / "simdir" / "platform.json").write_bytes(BINARY)
    line = host("refresh-platform", "--source", "sim", "--sim-state", str(tmp_path / "simdir"),
                env=config)  # fmt: skip
    assert "simulator state in" in line and "does not parse" in line
    line = host("refresh-platform", "--source", "dev-sev", "--dev", "/nonexistent", env=config)
    assert line.startswith(
        "attestd-host: error [launch_failed]: cannot open /nonexistent: No such file or directory"
    )


def test_prepare_domain_bad_xml_files(tmp_path: Path, config: dict[str, str]) -> None:
    line = host("prepare-domain", "--xml", "/nonexistent.xml", "--service", SERVICE, env=config)
    assert line == (
        "attestd-host: error [malformed_input]: cannot read domain XML /nonexistent.xml: "
        "No such file or directory"
    )
    binary = tmp_path / "domain.xml"
    binary.write_bytes(BINARY)
    line = host("prepare-domain", "--xml", str(binary), "--service", SERVICE, env=config)
    assert line == f"attestd-host: error [malformed_input]: domain XML {binary} is not UTF-8 text"
    line = host("prepare-domain", "--xml", str(tmp_path), "--service", SERVICE, env=config)
    assert "is not a regular file" in line


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--vm-id", "not-a-uuid", "argument --vm-id: 'not-a-uuid' is not a UUID"),
        ("--service", "not-a-url", "argument --service: 'not-a-url' is not an http(s)://"),
        ("--service", "ftp://a/v1", "argument --service: 'ftp://a/v1' is not an http(s)://"),
    ],
)
def test_prepare_domain_bad_arguments(
    option: str, value: str, message: str, tmp_path: Path, config: dict[str, str]
) -> None:
    xml = tmp_path / "d.xml"
    xml.write_text(SIM_XML, encoding="utf-8")
    argv = ["prepare-domain", "--xml", str(xml), "--simulate", "--service", SERVICE]
    result = run_script("attestd-host", *argv, option, value, env=config)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr


def test_install_hook_bad_paths(tmp_path: Path, config: dict[str, str]) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    line = host("install-hook", "--dir", str(a_file), env=config)
    assert line == f"attestd-host: error [malformed_input]: hook directory {a_file} is not a " + (
        "directory"
    )
    line = host("install-hook", "--dir", str(tmp_path), "--source", "/nonexistent", env=config)
    assert line == (
        "attestd-host: error [malformed_input]: cannot read hook source /nonexistent: "
        "No such file or directory"
    )


def test_attestd_qemu_bad_marker_and_config(tmp_path: Path, config: dict[str, str]) -> None:
    marked = {**config, MARKER_ENV: "not-a-uuid"}
    line = one_error_line(run_script("attestd-qemu", *QEMU_LAUNCH, env=marked))
    assert line == (
        "attestd-qemu: ATTESTD_DOMAIN='not-a-uuid' is not a VM id (UUID): run prepare-domain again"
    )
    binary = tmp_path / "host.toml"
    binary.write_bytes(BINARY)
    env = {"ATTESTD_HOST_CONFIG": str(binary), MARKER_ENV: UUID1}
    line = one_error_line(run_script("attestd-qemu", *QEMU_LAUNCH, env=env))
    assert line == f"attestd-qemu: host config {binary} is not UTF-8 text"
    bad_uuid = {**config, MARKER_ENV: UUID1}
    argv = ["-name", "guest=g", "-uuid", "not-a-uuid", "-chardev", "socket,id=charmonitor,fd=3"]
    line = one_error_line(run_script("attestd-qemu", *argv, env=bad_uuid))
    assert "ATTESTD_DOMAIN is set but libvirt's -uuid/monitor chardev is missing" in line


def test_one_shot_commands_use_libvirt_uri_from_the_config(
    tmp_path: Path, config: dict[str, str]
) -> None:
    """The config's libvirt_uri is the default of --connect (the test driver has "test")."""
    path = Path(config["ATTESTD_HOST_CONFIG"])
    path.write_text(path.read_text() + 'libvirt_uri = "test:///default"\n', encoding="utf-8")
    argv = ["prepare-domain", "--domain", "test", "--service", SERVICE, "--simulate"]
    result = run_script("attestd-host", *argv, "--emulator", "/x/attestd-qemu", env=config)
    assert result.returncode == 0, result.stderr
    assert parse_domain(result.stdout).name == "test"
    line = host("refresh-platform", "--source", "libvirt", env=config)
    assert "virNodeGetSEVInfo" in line  # asked the test driver, not qemu:///system
    argv = ["--config", str(path), "start", "no-such-domain"]
    assert "Domain not found" in host(*argv, env={})


def test_no_wrapper_turns_a_wrapped_domain_into_an_agent_path_domain(
    tmp_path: Path, config: dict[str, str]
) -> None:
    xml = tmp_path / "d.xml"
    xml.write_text(SIM_XML, encoding="utf-8")
    wrapped = tmp_path / "wrapped.xml"
    argv = ["prepare-domain", "--xml", str(xml), "--simulate", "--service", SERVICE]
    result = run_script("attestd-host", *argv, "-o", str(wrapped), env=config)
    assert result.returncode == 0, result.stderr
    info = parse_domain(wrapped.read_text())
    assert info.uses_wrapper and info.marker is not None
    argv = ["prepare-domain", "--xml", str(wrapped), "--simulate", "--service", SERVICE]
    result = run_script("attestd-host", *argv, "--no-wrapper", env=config)
    assert result.returncode == 0, result.stderr
    info = parse_domain(result.stdout)
    assert info.emulator == "/usr/bin/qemu-system-x86_64" and not info.uses_wrapper
    assert info.marker is None
    root = ET.fromstring(result.stdout)
    assert root.find("{http://libvirt.org/schemas/domain/qemu/1.0}commandline") is None
    # a plain emulator stays as it is; the wrapper is refused as the agent path's emulator
    result = run_script("attestd-host", *argv, "--no-wrapper", "--emulator", "/x/attestd-qemu",
                        env=config)  # fmt: skip
    assert "--no-wrapper: --emulator must be QEMU itself" in one_error_line(result)
    result = run_script("attestd-host", *argv, "--emulator", "/usr/bin/qemu", env=config)
    assert "--emulator must name attestd-qemu" in one_error_line(result)
    result = run_script("attestd-host", *argv, "--define", env=config)
    assert "--define needs --domain" in one_error_line(result)
