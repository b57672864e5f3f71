#!/bin/bash
# PID 1 of a test host's new PID namespace, already inside the host's network namespace.
# Stage "boot" gives the host its own cgroup subtree, then re-enters itself in a new cgroup
# namespace ("root" stage), builds the host's filesystem view and becomes systemd.
# usage: host-init.sh boot|root HOSTDIR HOSTNAME CGROUP [PYTHON_ENV]
set -euo pipefail
stage=$1 hostdir=$2 name=$3 cgroup=$4 python_env=${5:-}

if [[ $stage == boot ]]; then
  # Each host's systemd must see a private cgroup root, or the hosts would fight over one tree.
  # `ip netns exec` gave us a fresh /sys without the machine's cgroup mounts: mount them again.
  mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
  mkdir /sys/fs/cgroup/systemd /sys/fs/cgroup/unified
  mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
  mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
  for h in systemd unified; do
    mkdir -p "/sys/fs/cgroup/$h/$cgroup"
    echo $$ >"/sys/fs/cgroup/$h/$cgroup/cgroup.procs"
  done
  exec unshare --cgroup "$0" root "$hostdir" "$name" "$cgroup" "$python_env"
fi

hostname "$name"
# The writable layer lives on a tmpfs: an upper directory inside the lower "/" would overlap it.
mnt=$hostdir/mnt
mount -t tmpfs -o mode=755 fleetdeck-host "$mnt"
mkdir "$mnt/upper" "$mnt/work"
cp -a "$hostdir/seed/." "$mnt/upper/"
while read -r gone; do
  mkdir -p "$mnt/upper/$(dirname "$gone")"
  mknod "$mnt/upper/$gone" c 0 0  # overlayfs whiteout: hides the machine's file on this host
done <"$hostdir/whiteouts"
root=$hostdir/root
mount -t overlay overlay -o "lowerdir=/,upperdir=$mnt/upper,workdir=$mnt/work" "$root"

mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount -t tmpfs -o mode=755 cgroup "$root/sys/fs/cgroup"
mkdir "$root/sys/fs/cgroup/systemd" "$root/sys/fs/cgroup/unified"
mount -t cgroup -o none,name=systemd cgroup "$root/sys/fs/cgroup/systemd"
mount -t cgroup2 cgroup2 "$root/sys/fs/cgroup/unified"

# A private /dev: binding the machine's /dev would let gettys grab the VM's consoles.
mount -t tmpfs -o mode=755,nosuid dev "$root/dev"
for d in null zero full random urandom tty; do
  touch "$root/dev/$d"
  mount --bind "/dev/$d" "$root/dev/$d"
done
mkdir "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"
mount -t tmpfs -o mode=1777 shm "$root/dev/shm"
mount -t tmpfs -o mode=755 run "$root/run"
mount -t tmpfs -o mode=1777 tmp "$root/tmp"
# The harness's Python environment is seen through the overlay, like the rest of the machine, unless it lies
# below /tmp, which the host's own tmpfs hides: then it is bound back, read-only (a host can be an execution node).
if [[ $python_env == /tmp/* ]]; then
  mkdir -p "$root$python_env"
  mount --bind "$python_env" "$root$python_env"
  mount -o remount,bind,ro "$root$python_env"
fi

exec chroot "$root" /usr/bin/env container=other /lib/systemd/systemd systemd.unit=multi-user.target
