#!/bin/bash
# dracut module "attestd-snp": SEV-SNP attestation in the initramfs, with the network.
# attestd-guest snp-bootstrap runs once the root filesystem is mounted at /sysroot and
# the network is up (rd.neednet=1 ip=dhcp, or ip=<static>), and before initrd-fs.target:
# it reads the initdata (fw_cfg, qemu_fw_cfg), checks it against its report's HOST_DATA,
# attests to the service, then unlocks the released volumes and mounts them under
# /sysroot (--mount-root), so that they are in place before the real root's services
# start. Its state record is in /run/attestd, which survives switch-root: the real
# root's attestd-guest-snp.service then finds everything done and does nothing.
# The root filesystem itself is not one of these volumes (it is mounted first).
# Needs python3 (>= 3.11), python3-cryptography, python3-jwcrypto, cryptsetup and
# e2fsprogs in the image, and attestd-guest installed as /usr/local/bin/attestd-guest.
# Install: copy this directory to /usr/lib/dracut/modules.d/91attestd-snp and run
# `dracut -f --add attestd-snp` (kernel command line: rd.neednet=1 ip=dhcp).

check() {
    require_binaries python3 cryptsetup mkfs.ext4 e2fsck resize2fs blkid /usr/local/bin/attestd-guest \
        || return 1
    return 255  # only when asked for (--add attestd-snp / add_dracutmodules+=" attestd-snp ")
}

depends() {
    echo crypt network systemd
}

installkernel() {
    hostonly='' instmods qemu_fw_cfg virtio_net dm_crypt
}

_python_files() {
    # the interpreter's standard library and the SNP path's two libraries, as installed
    python3 -S -c 'import sys, sysconfig; print(sysconfig.get_path("stdlib"))'
    python3 -c 'import cryptography, jwcrypto, os
for m in (cryptography, jwcrypto): print(os.path.dirname(m.__file__))'
    python3 -c 'import _cffi_backend; print(_cffi_backend.__file__)' 2>/dev/null
}

install() {
    local dir file
    inst_multiple python3 cryptsetup mkfs.ext4 e2fsck resize2fs blkid mount umount \
        /usr/local/bin/attestd-guest
    for dir in $(_python_files); do
        while IFS= read -r file; do
            inst_simple "$file"
        done < <(find "$dir" -type f ! -name '*.pyc' ! -path '*/test/*' ! -path '*/tests/*')
    done
    inst_simple "$moddir/attestd-guest-snp-initrd.service" \
        "$systemdsystemunitdir/attestd-guest-snp-initrd.service"
    $SYSTEMCTL -q --root "$initdir" enable attestd-guest-snp-initrd.service
}
