#!/bin/bash
# Builds the Vagrant box the VM bed boots (scripts/vagrant-demo.sh), offline from Debian 12's
# packages: no box is downloaded, and the box carries everything the provisioning installs or
# runs (nginx-light for the real servers, curl for the client, nftables, OpenSSH and the
# libraries slb's package depends on for the balancers), so the guests need no package archive.
#
# mmdebstrap makes the root tree (the cloud kernel, systemd-networkd with DHCP on every
# interface, sshd, a `vagrant` user with sudo and the insecure key from Debian's vagrant
# package, which vagrant replaces at the first `vagrant up`); the disk is one MBR partition
# with ext4 made without the 64bit feature (extlinux 6.04 cannot read it) and extlinux,
# compressed into qcow2. Each guest makes its own machine-id and ed25519 host key at first
# boot (no RSA key: 34 s under software emulation) and prints the key on its serial console.
#
# Usage: scripts/build-box.sh [SLB.deb]   (default: the newest target/debian/slb_*.deb, whose
# Depends and Recommends go into the box). Prints the box's path. A box whose inputs (this
# script, the package list) have not changed is reused. SLB_BOX_DIR: where (target/vagrant).
set -euo pipefail
cd "$(dirname "$0")/.."
script=$PWD/scripts/build-box.sh
dir=${SLB_BOX_DIR:-target/vagrant}
box=$dir/slb-bookworm64.box
log() { echo "build-box: $*" >&2; }

deb=${1:-$(find target/debian -maxdepth 1 -name 'slb_*.deb' 2>/dev/null | sort -V | tail -n1)}
if [ -z "$deb" ] || [ ! -s "$deb" ]; then
    log "no slb .deb (run scripts/package.sh first)"
    exit 1
fi
# The package's dependencies by name (versions are bookworm's anyway).
mapfile -t slb_deps < <(dpkg-deb -f "$deb" Depends Recommends | sed 's/^[A-Za-z]*://' |
    tr ',|' '\n' | sed 's/(.*)//; s/ //g' | grep -v '^$' | sort -u)
pkgs=(
    # the system
    linux-image-cloud-amd64 systemd-sysv udev dbus passwd sudo iproute2 procps kmod
    openssh-server rsync
    # the real servers, the client, the balancers
    nginx-light curl nftables openssh-client ca-certificates
    "${slb_deps[@]}"
)
mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
key=/usr/share/rubygems-integration/all/gems/vagrant-2.3.4/keys/vagrant.pub
[ -s "$key" ] || key=$(dpkg -L vagrant | grep '/keys/vagrant\.pub$' | head -n1)
[ -s "$key" ] || { log "no insecure key in Debian's vagrant package"; exit 1; }
inputs=$( (sha256sum <"$script"; printf '%s\n' "${pkgs[@]}"; sha256sum <"$key") | sha256sum | cut -c1-16)
if [ -s "$box" ] && [ "$(cat "$box.inputs" 2>/dev/null)" = "$inputs" ]; then
    log "reusing $box (inputs $inputs unchanged)"
    echo "$box"
    exit 0
fi

start=$SECONDS
mkdir -p "$dir"
work=$(mktemp -d /tmp/slb-box.XXXXXX)
loop='' mnt=$work/mnt
cleanup() {
    if mountpoint -q "$mnt" 2>/dev/null; then umount "$mnt"; fi
    if [ -n "$loop" ]; then losetup -d "$loop" 2>/dev/null || true; fi
    # --one-file-system: never follow a mount mmdebstrap might have left inside the root.
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
root=$work/root
uuid=$(cat /proc/sys/kernel/random/uuid)

log "root tree: ${#pkgs[@]} packages from bookworm"
# The initramfs holds only what a libvirt guest's root needs (virtio disk, ext4): smaller and
# quicker to unpack under emulation than the default "most".
# shellcheck disable=SC2016 # $1 is mmdebstrap's, for its hooks
mmdebstrap --quiet --variant=apt --include="$(IFS=,; echo "${pkgs[*]}")" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d"' \
    --essential-hook='echo MODULES=list >"$1/etc/initramfs-tools/conf.d/slb-box.conf"' \
    --essential-hook='printf "%s\n" virtio_pci virtio_blk virtio_net ext4 >"$1/etc/initramfs-tools/modules"' \
    bookworm "$root" >&2

log "configuring the guest"
echo bookworm >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tbookworm\n' >"$root/etc/hosts"
printf 'UUID=%s / ext4 defaults,noatime 0 1\n' "$uuid" >"$root/etc/fstab"
# Each guest makes its own machine-id at first boot (DHCP client ids come from it).
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
# DHCP on every interface that vagrant has not configured (its 50-vagrant-*.network come first).
cat >"$root/etc/systemd/network/99-dhcp.network" <<'EOF'
[Match]
Name=eth*

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no

[DHCPv4]
ClientIdentifier=mac
EOF
# Host keys: none in the box; ed25519 only, made at first boot.
rm -f "$root"/etc/ssh/ssh_host_*
cat >"$root/etc/ssh/sshd_config.d/box.conf" <<'EOF'
HostKey /etc/ssh/ssh_host_ed25519_key
PasswordAuthentication no
UseDNS no
EOF
# It is printed on the serial console, which the host reads from a file: how the host learns
# the key without trusting the network it first connects over.
cat >"$root/usr/local/sbin/box-host-key" <<'EOF'
#!/bin/sh
set -e
ssh-keygen -q -t ed25519 -N "" -C "" -f /etc/ssh/ssh_host_ed25519_key
echo "box-host-key $(cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub)" >/dev/ttyS0
EOF
chmod 755 "$root/usr/local/sbin/box-host-key"
cat >"$root/etc/systemd/system/box-host-key.service" <<'EOF'
[Unit]
Description=This guest's SSH host key (ed25519)
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/box-host-key

[Install]
RequiredBy=ssh.service
EOF
chroot "$root" useradd -m -u 1000 -s /bin/bash -U vagrant
install -d -m 0700 -o 1000 -g 1000 "$root/home/vagrant/.ssh"
install -m 0600 -o 1000 -g 1000 "$key" "$root/home/vagrant/.ssh/authorized_keys"
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' >"$root/etc/sudoers.d/vagrant"
chmod 0440 "$root/etc/sudoers.d/vagrant"
chroot "$root" systemctl -q enable systemd-networkd box-host-key
# Nothing starts that the bed does not use: the provisioning starts nginx on the servers.
chroot "$root" systemctl -q disable nginx
chroot "$root" systemctl -q mask systemd-networkd-wait-online.service apt-daily.timer \
    apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

log "disk: MBR, ext4 (no 64bit), extlinux"
kernel=$(cd "$root/boot" && ls vmlinuz-*)
initrd=initrd.img-${kernel#vmlinuz-}
[ -s "$root/boot/$initrd" ] || { log "no initramfs for $kernel"; exit 1; }
mkdir -p "$root/boot/extlinux"
# no_timer_check: under software emulation on a busy host the kernel's check that the IO-APIC
# timer ticks can run too slowly and panic the boot ("IO-APIC + timer doesn't work!", seen in
# CI for one of six VMs while the host was compiling); the guests' clock is QEMU's anyway.
cat >"$root/boot/extlinux/extlinux.conf" <<EOF
DEFAULT debian
PROMPT 0
TIMEOUT 0
LABEL debian
  LINUX /boot/$kernel
  INITRD /boot/$initrd
  APPEND root=UUID=$uuid ro quiet console=ttyS0,115200 net.ifnames=0 mitigations=off no_timer_check
EOF
raw=$work/disk.raw
size_mib=4096
truncate -s "${size_mib}M" "$raw"
echo 'start=2048, type=83, bootable' | sfdisk -q "$raw"
mke2fs -q -t ext4 -O ^64bit -U "$uuid" -L root -E offset=$((2048 * 512)) -d "$root" \
    "$raw" "$((size_mib - 1))M"
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$raw" bs=440 count=1 conv=notrunc status=none
loop=$(losetup --find --show --offset $((2048 * 512)) "$raw")
mkdir -p "$mnt"
mount "$loop" "$mnt"
extlinux --install "$mnt/boot/extlinux" >/dev/null 2>&1
umount "$mnt"
losetup -d "$loop"
loop=''

log "box: qcow2 (compressed), metadata, Vagrantfile"
mkdir -p "$work/box"
qemu-img convert -c -O qcow2 "$raw" "$work/box/box.img"
echo '{"provider": "libvirt", "format": "qcow2", "virtual_size": 4}' >"$work/box/metadata.json"
cat >"$work/box/Vagrantfile" <<'EOF'
# slb's bed box: Debian 12 built from Debian's packages by scripts/build-box.sh.
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.disk_bus = "virtio"
    lv.nic_model_type = "virtio"
  end
end
EOF
tar -C "$work/box" -cf "$work/box.tar" metadata.json Vagrantfile box.img
mv -f "$work/box.tar" "$box"
echo "$inputs" >"$box.inputs"
log "built $box ($(du -m "$box" | cut -f1) MiB) in $((SECONDS - start)) s"
echo "$box"
