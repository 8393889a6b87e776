"""The attestd ``<metadata>`` namespace in libvirt domain XML, and domain preparation.

A domain is an *attestd domain* when its ``<metadata>`` holds one element in
:data:`NAMESPACE`::

    <metadata>
      <attestd:launch xmlns:attestd="urn:attestd:libvirt:1"
                      service="https://attest.example/v1"
                      vm-id="9f0c…" simulate="no"/>
    </metadata>

libvirt keeps custom-namespace metadata verbatim and passes it to hooks on stdin
(an unknown child of ``<launchSecurity>`` would be dropped). Only the standard
library is used so that the hook stays light.
"""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from pathlib import Path
from uuid import UUID, uuid4

from attestd.errors import ParseError
from attestd.guest import initdata as initdata_mod
from attestd.guest.secrets import SIM_SECRET_PORT
from attestd.host.state import MARKER_ENV

NAMESPACE = "urn:attestd:libvirt:1"
ELEMENT = "launch"
PREFIX = "attestd"
#: Written into ``<dhCert>``/``<session>`` so libvirt passes the file paths to QEMU;
#: the hook replaces the files' content per launch. Left as is, LAUNCH_START fails.
PLACEHOLDER = "AA=="
#: The emulator wrapper's command name; a domain whose ``<emulator>`` ends with it
#: is attested by the wrapper, any other by the host agent.
WRAPPER_NAME = "attestd-qemu"

#: libvirt's QEMU namespace: ``<qemu:commandline><qemu:env>`` carries the wrapper's marker.
QEMU_NAMESPACE = "http://libvirt.org/schemas/domain/qemu/1.0"

ET.register_namespace(PREFIX, NAMESPACE)
ET.register_namespace("qemu", QEMU_NAMESPACE)

_TRUE = {"yes", "true", "1", "on"}
_FALSE = {"no", "false", "0", "off", ""}


def _flag(value: str | None, name: str) -> bool:
    text = (value or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ParseError(f"attestd metadata: {name}={value!r} is not yes/no")


def _sim_attributes(
    firmware: Path | None, sim_state: Path | None, vcpu_type: str | None
) -> dict[str, str]:
    """The simulator's optional metadata attributes (SEV and SNP alike)."""
    attrs = {"firmware": firmware, "sim-state": sim_state, "vcpu-type": vcpu_type}
    return {name: str(value) for name, value in attrs.items() if value is not None}


@dataclass(frozen=True, slots=True)
class AttestdMetadata:
    """The content of ``<attestd:launch>``."""

    service: str
    vm_id: UUID
    simulate: bool = False
    firmware: Path | None = None
    sim_state: Path | None = None
    vcpu_type: str | None = None
    autostart: bool = False

    def to_element(self) -> ET.Element:
        """The metadata element (namespace-qualified)."""
        attrs = {"service": self.service, "vm-id": str(self.vm_id)}
        attrs["simulate"] = "yes" if self.simulate else "no"
        attrs.update(_sim_attributes(self.firmware, self.sim_state, self.vcpu_type))
        if self.autostart:
            attrs["autostart"] = "yes"
        return ET.Element(f"{{{NAMESPACE}}}{ELEMENT}", attrs)

    @classmethod
    def from_element(cls, element: ET.Element) -> AttestdMetadata:
        """Parse ``<attestd:launch>``; the service URL and a valid VM id are required."""
        service = (element.get("service") or "").strip()
        if not service.startswith(("https://", "http://")):
            raise ParseError("attestd metadata: service must be an http(s) URL")
        try:
            vm_id = UUID(element.get("vm-id") or "")
        except ValueError as exc:
            raise ParseError("attestd metadata: vm-id must be a UUID") from exc
        firmware = element.get("firmware")
        sim_state = element.get("sim-state")
        return cls(
            service=service.rstrip("/"),
            vm_id=vm_id,
            simulate=_flag(element.get("simulate"), "simulate"),
            firmware=Path(firmware) if firmware else None,
            sim_state=Path(sim_state) if sim_state else None,
            vcpu_type=element.get("vcpu-type") or None,
            autostart=_flag(element.get("autostart"), "autostart"),
        )


@dataclass(frozen=True, slots=True)
class SimSnp:
    """``<attestd:snp simulate='yes'>``: what the simulated PSP needs at ``virsh start``.

    QEMU under TCG cannot run an ``sev-snp-guest``, so a simulated-SNP domain has no
    ``<launchSecurity>``: the policy and HOST_DATA it would carry are kept here, and
    the hook starts ``attestd-sim snp serve`` with them and with what the domain is
    really started with (firmware, kernel, initrd, command line, vCPUs).
    """

    policy: int
    host_data: bytes
    firmware: Path | None = None
    sim_state: Path | None = None
    vcpu_type: str | None = None

    def attributes(self) -> dict[str, str]:
        """The metadata attributes (besides service and vm-id)."""
        attrs = {
            "simulate": "yes",
            "policy": f"0x{self.policy:x}",
            "host-data": self.host_data.hex(),
        }
        attrs.update(_sim_attributes(self.firmware, self.sim_state, self.vcpu_type))
        return attrs

    @classmethod
    def from_element(cls, element: ET.Element) -> SimSnp | None:
        """None unless the element says ``simulate='yes'``."""
        if not _flag(element.get("simulate"), "simulate"):
            return None
        policy = _int(element.get("policy"), "attestd:snp policy", base=0)
        try:
            host_data = bytes.fromhex(element.get("host-data") or "")
        except ValueError:
            host_data = b""
        if len(host_data) != 32:
            raise ParseError("attestd metadata: host-data must be 64 hex digits")
        firmware, sim_state = element.get("firmware"), element.get("sim-state")
        return cls(
            policy=policy,
            host_data=host_data,
            firmware=Path(firmware) if firmware else None,
            sim_state=Path(sim_state) if sim_state else None,
            vcpu_type=element.get("vcpu-type") or None,
        )


@dataclass(frozen=True, slots=True)
class SevConfig:
    """The parts of ``<launchSecurity type='sev'>`` attestd cares about."""

    policy: int
    has_dh_cert: bool
    has_session: bool


@dataclass(frozen=True, slots=True)
class DomainInfo:
    """What the host side reads from a (live or inactive) domain XML."""

    name: str
    uuid: UUID
    id: int | None
    metadata: AttestdMetadata | None
    emulator: str | None
    loader: Path | None
    vcpus: int
    cpu_model: str | None
    sev: SevConfig | None
    marker: str | None = None
    #: the unix socket of the simulated secret area's ``<channel>`` (live XML, simulated SEV)
    sim_secret_socket: str | None = None
    launch_security: str | None = None
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str | None = None
    #: ``<attestd:snp simulate='yes'>``: a simulated-SNP domain (the hook runs its PSP)
    sim_snp: SimSnp | None = None
    #: the unix socket of the simulated PSP's ``<channel>`` (simulated SNP)
    snp_psp_socket: str | None = None

    @property
    def is_snp(self) -> bool:
        """True for ``<launchSecurity type='sev-snp'>``: the guest attests itself."""
        return self.launch_security == "sev-snp"

    @property
    def uses_wrapper(self) -> bool:
        """True when the domain's emulator is the attestd wrapper."""
        return self.emulator is not None and Path(self.emulator).name == WRAPPER_NAME

    @property
    def short_name(self) -> str:
        """libvirt's ``virDomainDefGetShortName``: ``<id>-<name[:20]>``."""
        if self.id is None:
            raise ParseError(f"domain {self.name} has no id (not a live definition)")
        return f"{self.id}-{self.name[:20]}"


def _parse_root(xml: str) -> ET.Element:
    try:
        root = ET.fromstring(xml)  # noqa: S314 - libvirt's XML, no entity expansion
    except ET.ParseError as exc:
        raise ParseError(f"domain XML does not parse: {exc}") from exc
    if root.tag != "domain":
        raise ParseError(f"not a domain XML (root element {root.tag!r})")
    return root


def _metadata_element(root: ET.Element) -> ET.Element | None:
    return root.find(f"metadata/{{{NAMESPACE}}}{ELEMENT}")


_COMMANDLINE = f"{{{QEMU_NAMESPACE}}}commandline"
_ENV = f"{{{QEMU_NAMESPACE}}}env"


def _marker_element(root: ET.Element) -> ET.Element | None:
    return root.find(f"{_COMMANDLINE}/{_ENV}[@name='{MARKER_ENV}']")


def _set_marker(root: ET.Element, value: str | None) -> None:
    """Add, replace (``value``) or remove (None) the wrapper's ``<qemu:env>`` marker."""
    for cmdline in root.findall(_COMMANDLINE):
        for env in cmdline.findall(_ENV):
            if env.get("name") == MARKER_ENV:
                cmdline.remove(env)
        if value is None and len(cmdline) == 0:
            root.remove(cmdline)
    if value is None:
        return
    parent = root.find(_COMMANDLINE)
    if parent is None:
        parent = ET.SubElement(root, _COMMANDLINE)
    ET.SubElement(parent, _ENV, {"name": MARKER_ENV, "value": value})


_SIM_CHANNEL = f"devices/channel[@type='unix']/target[@name='{SIM_SECRET_PORT}']/.."
#: The virtio-serial port of the simulated SNP PSP (``attestd-sim snp serve``).
SNP_PSP_PORT = "org.attestd.snp-psp"
_PSP_CHANNEL = f"devices/channel[@type='unix']/target[@name='{SNP_PSP_PORT}']/.."


def _add_sim_channel(root: ET.Element) -> None:
    """The virtio-serial port the simulated secret area is delivered through (once).

    libvirt picks the socket path (``<source mode='bind'/>`` without a path) and QEMU
    listens on it; the live XML the hook sees carries the path.
    """
    if root.find(_SIM_CHANNEL) is not None:
        return
    devices = root.find("devices")
    if devices is None:
        devices = ET.SubElement(root, "devices")
    channel = ET.SubElement(devices, "channel", {"type": "unix"})
    ET.SubElement(channel, "source", {"mode": "bind"})
    ET.SubElement(channel, "target", {"type": "virtio", "name": SIM_SECRET_PORT})


def mentions_attestd(xml: str) -> bool:
    """Cheap pre-check used by the hook dispatcher before parsing anything."""
    return NAMESPACE in xml


def _int(text: str | None, what: str, *, base: int = 10) -> int:
    try:
        return int((text or "").strip(), base)
    except ValueError as exc:
        raise ParseError(f"domain XML: {what} {text!r} is not a number") from exc


def parse_domain(xml: str) -> DomainInfo:
    """Parse a domain XML into :class:`DomainInfo`."""
    root = _parse_root(xml)
    name = root.findtext("name") or ""
    try:
        uuid = UUID(root.findtext("uuid") or "")
    except ValueError as exc:
        raise ParseError("domain XML: missing or invalid <uuid>") from exc
    dom_id = root.get("id")
    meta_el = _metadata_element(root)
    loader = root.findtext("os/loader")
    sev_el = root.find("launchSecurity[@type='sev']")
    launch_el = root.find("launchSecurity")
    sev = None
    if sev_el is not None:
        sev = SevConfig(
            policy=_int(sev_el.findtext("policy"), "launchSecurity policy", base=16),
            has_dh_cert=sev_el.find("dhCert") is not None,
            has_session=sev_el.find("session") is not None,
        )
    vcpu_text = root.findtext("vcpu")
    marker_el = _marker_element(root)
    channel = root.find(_SIM_CHANNEL)
    source = channel.find("source") if channel is not None else None
    psp = root.find(f"{_PSP_CHANNEL}/source")
    snp_el = root.find(f"metadata/{{{NAMESPACE}}}{SNP_ELEMENT}")
    return DomainInfo(
        name=name,
        uuid=uuid,
        id=_int(dom_id, "domain id") if dom_id is not None and dom_id != "-1" else None,
        metadata=AttestdMetadata.from_element(meta_el) if meta_el is not None else None,
        emulator=(root.findtext("devices/emulator") or "").strip() or None,
        loader=Path(loader.strip()) if loader and loader.strip() else None,
        vcpus=_int(vcpu_text, "vcpu") if vcpu_text is not None else 1,
        cpu_model=(root.findtext("cpu/model") or "").strip() or None,
        sev=sev,
        marker=marker_el.get("value") if marker_el is not None else None,
        sim_secret_socket=(source.get("path") or None) if source is not None else None,
        launch_security=launch_el.get("type") if launch_el is not None else None,
        kernel=_path(root.findtext("os/kernel")),
        initrd=_path(root.findtext("os/initrd")),
        cmdline=root.findtext("os/cmdline"),
        sim_snp=SimSnp.from_element(snp_el) if snp_el is not None else None,
        snp_psp_socket=(psp.get("path") or None) if psp is not None else None,
    )


def _path(text: str | None) -> Path | None:
    return Path(text.strip()) if text and text.strip() else None


def ensure_uuid(xml: str) -> str:
    """``xml`` with a ``<uuid>`` (a new random one when it has none, as libvirt would)."""
    root = _parse_root(xml)
    if (root.findtext("uuid") or "").strip():
        return xml
    element = ET.Element("uuid")
    element.text = str(uuid4())
    index = next((i + 1 for i, el in enumerate(root) if el.tag == "name"), 0)
    root.insert(index, element)
    return ET.tostring(root, encoding="unicode") + "\n"


def prepare_domain(xml: str, metadata: AttestdMetadata, *, emulator: str | None) -> str:
    """Return ``xml`` made into an attestd domain.

    Adds (or replaces) the attestd metadata, the ``<dhCert>``/``<session>``
    placeholders of a ``<launchSecurity type='sev'>`` (simulated: the simulated secret
    area's virtio-serial ``<channel>`` instead) and, when ``emulator`` is
    given, points ``<emulator>`` at the wrapper. A domain whose emulator is then the
    wrapper gets the ``<qemu:env name='ATTESTD_DOMAIN'>`` marker (any other loses
    it): the wrapper refuses to run a marked domain that has no launch state.
    """
    root = _parse_root(xml)
    sev_el = root.find("launchSecurity")
    if metadata.simulate and sev_el is not None:
        raise ParseError("a simulated-SEV domain must not have <launchSecurity>")
    if metadata.simulate:
        _add_sim_channel(root)
    if not metadata.simulate:
        if sev_el is None or sev_el.get("type") != "sev":
            raise ParseError("domain has no <launchSecurity type='sev'> (use simulate for tests)")
        for tag in ("dhCert", "session"):
            if sev_el.find(tag) is None:
                ET.SubElement(sev_el, tag).text = PLACEHOLDER
    meta = root.find("metadata")
    if meta is None:
        meta = ET.Element("metadata")
        # libvirt accepts <metadata> anywhere; put it after <uuid> as virsh does.
        index = next((i + 1 for i, el in enumerate(root) if el.tag in ("uuid", "name")), 0)
        root.insert(index, meta)
    old = _metadata_element(root)
    if old is not None:
        meta.remove(old)
    meta.append(metadata.to_element())
    if emulator is not None:
        _set_emulator(root, emulator)
    wrapped = Path((root.findtext("devices/emulator") or "").strip()).name == WRAPPER_NAME
    _set_marker(root, str(metadata.vm_id) if wrapped else None)
    return ET.tostring(root, encoding="unicode") + "\n"


#: The fw_cfg file that carries the initdata document (base64) to an SNP guest.
FWCFG_INITDATA = "opt/attestd/initdata"
SNP_ELEMENT = "snp"
SNP_DEFAULT_POLICY = 0x30000


def _metadata_parent(root: ET.Element) -> ET.Element:
    meta = root.find("metadata")
    if meta is None:
        meta = ET.Element("metadata")
        root.insert(_after(root, ("name", "uuid", "title", "description")), meta)
    return meta


def _after(root: ET.Element, tags: tuple[str, ...]) -> int:
    """The index just after the last child of ``root`` with one of ``tags`` (else 0)."""
    return max((i + 1 for i, el in enumerate(root) if el.tag in tags), default=0)


def _set_fwcfg(root: ET.Element, name: str, value: str) -> None:
    """Add or replace ``<sysinfo type='fwcfg'><entry name=…>`` (other entries stay)."""
    sysinfo = root.find("sysinfo[@type='fwcfg']")
    if sysinfo is None:
        sysinfo = ET.Element("sysinfo", {"type": "fwcfg"})
        root.insert(_after(root, ("name", "uuid", "metadata", "sysinfo")), sysinfo)
    for entry in sysinfo.findall("entry"):
        if entry.get("name") == name:
            sysinfo.remove(entry)
    ET.SubElement(sysinfo, "entry", {"name": name}).text = value


def prepare_snp_domain(
    xml: str,
    *,
    policy: int,
    initdata: bytes,
    service: str,
    host_data: bytes | None = None,
    simulate: SimSnp | None = None,
    psp_socket: Path | None = None,
) -> str:
    """Return ``xml`` made into an attestd SEV-SNP domain.

    Writes ``<launchSecurity type='sev-snp'>`` with ``policy`` and ``<hostData>`` (the
    base64 of the initdata's 32-byte digest), ``kernelHashes='yes'`` when the domain
    boots a kernel directly, and the initdata (base64) as fw_cfg
    :data:`FWCFG_INITDATA`. Children of an existing ``sev-snp`` element other than
    policy and hostData (idBlock, idAuth, ...) are kept. The ``<attestd:launch>``
    metadata and the wrapper marker are removed: an SNP domain needs neither the
    hook nor the wrapper (the guest attests itself); ``<attestd:snp>`` records the
    service and VM id for people reading the XML. ``host_data`` (the service's answer,
    an owner's pinned value) replaces the digest of ``initdata``.

    ``simulate`` (QEMU TCG, ``attestd-sim``): no ``<launchSecurity>``; policy and
    HOST_DATA go into ``<attestd:snp simulate='yes'>`` for the simulated PSP, which
    the hook serves on ``psp_socket``, connected to the guest's virtio-serial port
    :data:`SNP_PSP_PORT` (QEMU connects to it when it starts).
    """
    root = _parse_root(xml)
    try:
        doc = initdata_mod.parse(initdata)
        digest = initdata_mod.host_data(initdata)
    except initdata_mod.InitdataError as exc:
        raise ParseError(exc.message) from None
    if host_data is None:
        host_data = digest
    elif len(host_data) != initdata_mod.HOST_DATA_SIZE:
        raise ParseError("HOST_DATA must be 32 bytes")
    if not 0 <= policy < 1 << 64 or not policy & (1 << 17):
        raise ParseError("SNP policy must be a 64-bit value with bit 17 set")
    old = root.find("launchSecurity")
    if simulate is not None:
        if old is not None:
            raise ParseError("a simulated-SNP domain must not have <launchSecurity>")
        if psp_socket is None:
            raise ValueError("a simulated-SNP domain needs the PSP socket path")
        _add_psp_channel(root, psp_socket)
    else:
        _launch_security(root, old, policy, host_data)
    meta = _metadata_parent(root)
    for element in (_metadata_element(root), root.find(f"metadata/{{{NAMESPACE}}}{SNP_ELEMENT}")):
        if element is not None:
            meta.remove(element)
    attrs = {"service": service, "vm-id": str(doc.vm_id)}
    if simulate is not None:
        attrs.update(replace(simulate, policy=policy, host_data=host_data).attributes())
    meta.append(ET.Element(f"{{{NAMESPACE}}}{SNP_ELEMENT}", attrs))
    _set_fwcfg(root, FWCFG_INITDATA, base64.b64encode(initdata).decode("ascii"))
    _set_marker(root, None)
    return ET.tostring(root, encoding="unicode") + "\n"


def _launch_security(
    root: ET.Element, old: ET.Element | None, policy: int, host_data: bytes
) -> None:
    """``<launchSecurity type='sev-snp'>`` with policy and hostData (other children kept)."""
    keep: list[ET.Element] = []
    attrs: dict[str, str] = {}
    if old is not None:
        if old.get("type") != "sev-snp":
            raise ParseError(
                f"domain has <launchSecurity type='{old.get('type')}'>; "
                "an SNP domain needs type='sev-snp' (or none)"
            )
        attrs = {k: v for k, v in old.attrib.items() if k not in ("type", "kernelHashes")}
        keep = [el for el in old if el.tag not in ("policy", "hostData")]
        root.remove(old)
    sev = ET.SubElement(root, "launchSecurity", {"type": "sev-snp", **attrs})
    if (root.findtext("os/kernel") or "").strip():
        sev.set("kernelHashes", "yes")
    ET.SubElement(sev, "policy").text = f"0x{policy:08x}"
    ET.SubElement(sev, "hostData").text = base64.b64encode(host_data).decode("ascii")
    sev.extend(keep)


def _add_psp_channel(root: ET.Element, path: Path) -> None:
    """The simulated PSP's virtio-serial port; QEMU connects to ``path`` (the PSP listens)."""
    devices = root.find("devices")
    if devices is None:
        devices = ET.SubElement(root, "devices")
    old = root.find(_PSP_CHANNEL)
    if old is not None:
        devices.remove(old)
    channel = ET.SubElement(devices, "channel", {"type": "unix"})
    ET.SubElement(channel, "source", {"mode": "connect", "path": str(path)})
    ET.SubElement(channel, "target", {"type": "virtio", "name": SNP_PSP_PORT})


def set_emulator(xml: str, emulator: str) -> str:
    """``xml`` with ``<devices><emulator>`` set to ``emulator``."""
    root = _parse_root(xml)
    _set_emulator(root, emulator)
    return ET.tostring(root, encoding="unicode") + "\n"


def _set_emulator(root: ET.Element, emulator: str) -> None:
    devices = root.find("devices")
    if devices is None:
        devices = ET.SubElement(root, "devices")
    emu = devices.find("emulator")
    if emu is None:
        emu = ET.Element("emulator")
        devices.insert(0, emu)
    emu.text = emulator
