"""Run tests on a pure cgroup v2 kernel: a qemu VM booting Debian's kernel on this machine's
root filesystem, shared read-only over 9p (docs/rebuild-pipeline.md, "Which cgroup path is
tested where").

The development machine is a cgroup v1/v2 hybrid (memory and pids on v1), so the v2 path of
``rebuilder/_cgroup.py`` never runs there. This boots ``/boot/vmlinuz-*`` (package
``linux-image-amd64``) with a tiny initramfs (bash, mount, insmod, chroot and the virtio/9p
modules, copied from the host), chroots into the shared root, mounts cgroup2 alone at
/sys/fs/cgroup plus tmpfs /tmp, /run and /var/tmp, and runs pytest as root in the repository
(its .venv), printing to the serial console; the VM powers off when pytest ends::

    python3 scripts/cgroup_v2_vm.py -- tests/unit/rebuilder/test_cgroup.py \\
        tests/integration/test_sandbox_limits.py -k "memory or fork_bomb or not_starved"

Needs root, ``qemu-system-x86`` and ``linux-image-amd64``. It uses KVM only with ``--kvm`` (on
the nested development VM, KVM guests hang before the kernel's first message; TCG works).
Exit status: pytest's inside the VM (125 when it never reported one).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shlex
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BINARIES = ("/bin/bash", "/bin/mount", "/bin/umount", "/sbin/insmod", "/usr/sbin/chroot",
            "/bin/mkdir", "/bin/cat", "/bin/sleep")
MODULES = ("virtio_pci", "9pnet_virtio", "9p")

INIT = """#!/bin/bash
export PATH=/bin
mount -t proc proc /proc
mount -t devtmpfs dev /dev
{insmods}
mkdir -p /root
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /root \\
  || {{ echo "RQ-VM 9p mount failed"; echo o > /proc/sysrq-trigger; sleep 10; }}
umount /proc /dev
# the shared root replaces the initramfs at / (as switch_root does): a process merely chrooted
# could not create the user namespaces bwrap needs
cd /root
mount --move . /
exec chroot . /bin/bash {inside}
"""

INSIDE = """#!/bin/bash
export HOME=/tmp PYTHONDONTWRITEBYTECODE=1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs shm /dev/shm
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mount -t tmpfs vartmp /var/tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
modprobe loop; modprobe ext4
echo "RQ-VM kernel $(uname -r), cgroup $(cat /proc/self/cgroup)"
grep cgroup /proc/self/mountinfo
echo "RQ-VM controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
cd {repo}
.venv/bin/python -c "from rebuilder import sandbox
for e in sandbox.enforcement(): print('RQ-VM', e)"
.venv/bin/python -m pytest -p no:cacheprovider --basetemp=/tmp/pt -q -rs {args} 2>&1
echo "RQ-VM-DONE rc=$?"
sync
echo o > /proc/sysrq-trigger
sleep 10
"""


def _module_order(kver: str, names: tuple[str, ...]) -> list[str]:
    base = f"/lib/modules/{kver}"
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in Path(base, "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[Path(mod).name.split(".ko")[0]] = (mod, rest.split())
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        path, needs = deps[name]
        for d in needs:
            visit(Path(d).name.split(".ko")[0])
        order.append(f"{base}/{path}")

    for n in names:
        visit(n)
    return order


def _cpio(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A newc archive of ``files`` (archive path -> content, mode) and their directories."""
    dirs = {"proc", "dev", "root", "sys"}
    for p in files:
        parts = p.split("/")
        dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
    out = bytearray()
    entries = [(d, stat.S_IFDIR | 0o755, b"") for d in sorted(dirs, key=len)]
    entries += [(p, stat.S_IFREG | mode, data) for p, (data, mode) in files.items()]
    entries.append(("TRAILER!!!", 0, b""))
    for ino, (name, mode, data) in enumerate(entries, 1):
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0)
        head = ("070701" + "".join(f"{v:08x}" for v in fields)).encode() + name.encode() + b"\0"
        out += head + b"\0" * (-len(head) % 4) + data + b"\0" * (-len(data) % 4)
    return bytes(out)


def _initramfs(kver: str, inside: Path) -> bytes:
    files: dict[str, tuple[bytes, int]] = {}
    libs: set[str] = set()
    for b in BINARIES:
        real = os.path.realpath(b)
        files["bin/" + Path(b).name] = (Path(real).read_bytes(), 0o755)
        ldd = subprocess.run(["ldd", real], capture_output=True, text=True, check=False).stdout
        libs.update(re.findall(r"(/\S+)", ldd))
    for lib in libs:
        files[lib.lstrip("/")] = (Path(os.path.realpath(lib)).read_bytes(), 0o755)
    insmods = []
    for m in _module_order(kver, MODULES):
        files["m/" + Path(m).name] = (Path(m).read_bytes(), 0o644)
        insmods.append(f"insmod /m/{Path(m).name}")
    init = INIT.format(insmods="\n".join(insmods), inside=shlex.quote(str(inside)))
    files["init"] = (init.encode(), 0o755)
    return _cpio(files)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kvm", action="store_true", help="use KVM (default: TCG emulation)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds for the whole VM")
    ap.add_argument("pytest_args", nargs="+")
    a = ap.parse_args()
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    if not kernels:
        sys.exit("no /boot/vmlinuz-*: apt-get install linux-image-amd64")
    kernel = kernels[-1]
    kver = kernel.removeprefix("/boot/vmlinuz-")
    with tempfile.TemporaryDirectory(prefix="rq-v2vm-", dir="/var/tmp") as tmp:
        # /var/tmp: the VM mounts tmpfs over /tmp only after the script has been opened
        inside = Path(tmp) / "inside.sh"
        inside.write_text(INSIDE.format(repo=shlex.quote(str(REPO)),
                                        args=shlex.join(a.pytest_args)))
        inside.chmod(0o755)
        initrd = Path(tmp) / "initrd.cpio"
        initrd.write_bytes(_initramfs(kver, inside))
        accel = ["-enable-kvm", "-cpu", "host,-arch-capabilities"] if a.kvm else [
            "-accel", "tcg", "-cpu", "max"]
        argv = ["qemu-system-x86_64", *accel, "-m", "3072", "-smp", "2", "-nographic",
                "-no-reboot", "-kernel", kernel, "-initrd", str(initrd),
                "-append", "console=ttyS0 panic=-1 quiet",
                "-virtfs", "local,path=/,mount_tag=hostroot,security_model=passthrough,"
                "readonly=on,multidevs=remap"]
        rc = 125
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL) as vm:
            assert vm.stdout is not None
            try:
                for raw in vm.stdout:
                    line = raw.decode("utf-8", "replace")
                    sys.stdout.write(line)
                    m = re.search(r"RQ-VM-DONE rc=(\d+)", line)
                    if m:
                        rc = int(m.group(1))
                vm.wait(a.timeout)
            finally:
                if vm.poll() is None:
                    vm.kill()
    return rc


if __name__ == "__main__":
    sys.exit(main())
