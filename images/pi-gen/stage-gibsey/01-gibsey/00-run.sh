#!/bin/bash -e
# pi-gen sub-stage, run on the build host with ROOTFS_DIR set: put the node into the image.
# files/ is filled by `gibsey image build` (gibsey-src.tar.gz, requirements.txt, the units (.service,
# .socket) with @PREFIX@ already replaced by /opt/gibsey, the Mosquitto drop-in, the aarch64 VM
# library).
PREFIX=/opt/gibsey

install -d -m 755 "${ROOTFS_DIR}${PREFIX}/src" "${ROOTFS_DIR}/etc/gibsey" "${ROOTFS_DIR}/var/lib/gibsey"
tar -xzf files/gibsey-src.tar.gz -C "${ROOTFS_DIR}${PREFIX}/src"
install -D -m 755 files/libgibsey_vm.so "${ROOTFS_DIR}${PREFIX}/src/vm_zig/zig-out/lib/libgibsey_vm.so"
install -m 644 files/requirements.txt "${ROOTFS_DIR}${PREFIX}/requirements.txt"
for unit in files/*.service files/*.socket; do
	install -m 644 "${unit}" "${ROOTFS_DIR}/etc/systemd/system/"
done
# Closed to anonymous clients: its users, passwords and ACL are made by gibsey-firstboot.service
# (before Mosquitto, at every boot) and the node's unit logs in as gibsey-node.
install -m 644 files/mosquitto-gibsey.conf "${ROOTFS_DIR}/etc/mosquitto/conf.d/gibsey.conf"
install -m 644 files/gibsey.toml.example "${ROOTFS_DIR}/boot/firmware/gibsey.toml"

# The data partition (made by gibsey-firstboot from the card's free space) holds the key, the
# ledger and the stores. No fstab line for it: gibsey-firstboot makes it and mounts it at every
# boot, before Mosquitto and the node. A line, even `nofail`, makes the node's unit require the
# mount (ReadWritePaths=/var/lib/gibsey), and on the first boot, with no such partition yet, the
# node failed with "Dependency failed" (seen booting the Debian image under qemu, issue 18).
sed -i '/LABEL=gibsey-data/d' "${ROOTFS_DIR}/etc/fstab"

# Raspberry Pi OS grows the root partition over the whole card at first boot; a node keeps a
# read-only root of the image's size and gives the rest of the card to the data partition.
CMDLINE="${ROOTFS_DIR}/boot/firmware/cmdline.txt"
if [ -f "${CMDLINE}" ]; then
	sed -i 's| init=/usr/lib/raspberrypi-sys-mods/firstboot||' "${CMDLINE}"
	# Raspberry Pi kernels turn the memory cgroup off (cgroup_disable=memory from the device
	# tree, before cmdline.txt); without it MemoryMax= of gibsey-agent-worker@.service is
	# silently ignored and a model can push the node into the OOM killer.
	grep -q "cgroup_enable=memory" "${CMDLINE}" || sed -i '1 s|$| cgroup_enable=memory|' "${CMDLINE}"
fi

on_chroot << CHROOT
set -e
id -u gibsey >/dev/null 2>&1 || useradd --system --home-dir /var/lib/gibsey --no-create-home --shell /usr/sbin/nologin --groups dialout gibsey
python3 -m venv ${PREFIX}/.venv
${PREFIX}/.venv/bin/pip install --no-cache-dir --only-binary=:all: -r ${PREFIX}/requirements.txt
echo ${PREFIX}/src > "\$(${PREFIX}/.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/gibsey-src.pth"
printf '#!${PREFIX}/.venv/bin/python\nimport sys\nfrom gibsey.cli import main\nsys.exit(main())\n' > ${PREFIX}/.venv/bin/gibsey
chmod 755 ${PREFIX}/.venv/bin/gibsey
${PREFIX}/.venv/bin/python -m compileall -q ${PREFIX}/src/node ${PREFIX}/src/ledger ${PREFIX}/src/mesh ${PREFIX}/src/gibsey || true
chown gibsey:gibsey /var/lib/gibsey
chmod 700 /var/lib/gibsey
systemctl enable mosquitto.service gibsey-firstboot.service gibsey-node.service gibsey-agent-worker.socket
CHROOT
