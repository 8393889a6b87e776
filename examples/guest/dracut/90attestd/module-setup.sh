#!/bin/bash
# dracut module "attestd": root-disk unlock from the SEV launch secret.
# The LUKS passphrase registered as the owner's `luks-passphrase` secret arrives as
# secret-table entry 736869e5-84f0-4973-92ec-06879ce3da0b; before systemd-cryptsetup
# runs, attestd-luks-key copies it (without its trailing NUL) to
# /run/cryptsetup-keys.d/<name>.key, where systemd-cryptsetup looks for a key for
# the volume <name>. Use with rd.luks.name=<LUKS-UUID>=<name> and (recommended)
# rd.luks.options=<LUKS-UUID>=keyfile-erase. Set the volume name with
# rd.attestd.name=<name> (default: root).
# Install: copy this directory to /usr/lib/dracut/modules.d/90attestd, copy
# examples/guest/attestd-luks-key into it, and run
# `dracut -f --add attestd`. The data volumes are handled later, in the real root,
# by attestd-guest.service.

check() {
    require_binaries od head tail wc || return 1
    return 255  # only when asked for (--add attestd / add_dracutmodules+=" attestd ")
}

depends() {
    echo crypt systemd
}

installkernel() {
    hostonly='' instmods efi_secret
}

install() {
    inst_multiple od head tail wc tr mkdir rm dirname modprobe mount
    inst_simple "$moddir/attestd-luks-key" /usr/libexec/attestd/attestd-luks-key
    inst_simple "$moddir/attestd-luks-key.service" \
        "$systemdsystemunitdir/attestd-luks-key.service"
    $SYSTEMCTL -q --root "$initdir" enable attestd-luks-key.service
}
