"""Guest hardening in the image recipe (images/), checked without building it:

* ``clawden-lockdown.service`` disables kernel module loading once the
  modules a claw needs are loaded, before the claw's sshd can start, and
  customize.sh enables it; ``systemd-analyze verify`` accepts it (when this
  machine has systemd-analyze; the parse checks below run everywhere);
* the protocol families a claw never uses are blacklisted, and nothing the
  guest needs is;
* every claw process runs under ``clawden-control.service``'s seccomp filters
  (no io_uring, four socket families, native syscalls only) and with
  no_new_privs, set by the ``as-claw`` helper every host command goes through
  (the control user's checks are in test_image_control_user.py);
* ``/data`` is mounted with ``discard``.

The integration test ``test_guest_is_locked_down_and_capped`` in
tests/integration/test_a_claw_vms.py checks the same in a booted claw.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
OVERLAY = IMAGES / "overlay"
UNITS = OVERLAY / "etc/systemd/system"
LOCKDOWN = UNITS / "clawden-lockdown.service"
CONTROL = UNITS / "clawden-control.service"
BLACKLIST = OVERLAY / "etc/modprobe.d/clawden-blacklist.conf"
UNUSED_HARDWARE = OVERLAY / "etc/modprobe.d/clawden-unused-hardware.conf"
INITRAMFS_MODULES = OVERLAY / "usr/share/initramfs-tools/modules.d/clawden"

# Loaded by udev for the VM's virtual hardware; lockdown loads them explicitly.
# virtio_balloon hands the RAM a claw frees back to the host (free page
# reporting): once modules are disabled it could never be loaded.
UDEV_MODULES = {"virtio_console", "virtio_rng", "virtio_balloon", "button", "evdev"}
# What the attack run saw autoloaded by socket() calls, and their kin.
MUST_BLACKLIST = {
    "sctp", "dccp", "kcm", "appletalk", "atm", "can", "af_alg", "tipc", "rds", "ax25",
    "netrom", "rose", "x25", "ieee802154", "phonet", "llc2", "psnap", "bluetooth", "nfc",
    "vsock", "l2tp_core", "af_key", "rxrpc", "qrtr", "smc", "caif", "algif_hash",
}  # fmt: skip

Unit = dict[str, dict[str, list[str]]]


def read_unit(path: Path) -> Unit:
    """A systemd unit file as {section: {key: [values, in order]}}.

    systemd's syntax, not configparser's: keys repeat (``After=`` twice adds
    to the list), ``#`` and ``;`` start comments, a trailing backslash
    continues the line; list-valued settings are split on whitespace by the
    callers that need it."""
    unit: Unit = defaultdict(lambda: defaultdict(list))
    section = ""
    pending = ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep and section, f"{path.name}: not a unit file line: {raw!r}"
        unit[section][key.strip()].append(value.strip())
    return unit


def words(unit: Unit, section: str, key: str) -> list[str]:
    return [w for value in unit[section].get(key, []) for w in value.split()]


def overlay_units() -> dict[str, Unit]:
    return {p.name: read_unit(p) for p in sorted(UNITS.glob("*.service"))}


# ---- clawden-lockdown.service ---------------------------------------------------


def test_lockdown_disables_module_loading_for_good() -> None:
    unit = read_unit(LOCKDOWN)
    service = unit["Service"]
    assert service["Type"] == ["oneshot"] and service["RemainAfterExit"] == ["yes"]
    (start,) = service["ExecStart"]
    assert not start.startswith("-"), "a failed lockdown must show as a failed unit"
    script = re.fullmatch(r"/bin/sh -c '(.*)'", start)
    assert script, start
    steps = [s.strip() for s in script.group(1).split("&&")]
    # modprobe path emptied first (the kernel then runs no helper at all),
    # then the one-way switch.
    assert steps == [
        "echo > /proc/sys/kernel/modprobe",
        "echo 1 > /proc/sys/kernel/modules_disabled",
    ]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_lockdown_waits_for_what_needs_modules_and_loads_them_first() -> None:
    unit = read_unit(LOCKDOWN)
    pre = unit["Service"]["ExecStartPre"]
    assert any(p.startswith("-/bin/udevadm settle") for p in pre), pre
    (modprobe,) = [p for p in pre if "/sbin/modprobe" in p]
    assert modprobe.startswith("-/sbin/modprobe -a ")
    assert set(modprobe.split()[2:]) == UDEV_MODULES

    after = set(words(unit, "Unit", "After"))
    assert {"systemd-udev-trigger.service", "data.mount", "clawden-seed.service"} <= after
    # Every device or mount another clawden unit depends on exists (its
    # driver is loaded) before lockdown runs.
    for name, other in overlay_units().items():
        if name == LOCKDOWN.name:
            continue
        for key in ("Requires", "BindsTo"):
            for dep in words(other, "Unit", key):
                if dep.endswith((".device", ".mount")):
                    assert dep in after, f"{name} needs {dep}: lockdown must come after it"
        if words(other, "Unit", "RequiresMountsFor") == ["/data"]:
            assert "data.mount" in after


def test_lockdown_runs_before_any_claw_process_can_exist() -> None:
    lockdown = read_unit(LOCKDOWN)
    assert "clawden-control.service" in words(lockdown, "Unit", "Before")
    # ... and nothing it must follow is itself ordered after the control
    # channel (that would be an ordering cycle systemd breaks at random).
    units = overlay_units()
    edges: dict[str, set[str]] = defaultdict(set)  # unit -> units that start before it
    for name, unit in units.items():
        edges[name] |= set(words(unit, "Unit", "After"))
        for later in words(unit, "Unit", "Before"):
            edges[later].add(name)

    def before(name: str, seen: set[str]) -> set[str]:
        for dep in edges.get(name, set()) - seen:
            seen.add(dep)
            before(dep, seen)
        return seen

    for name in units:
        assert name not in before(name, set()), f"ordering cycle through {name}"
    assert LOCKDOWN.name in before("clawden-control.service", set())


def _enabled_units() -> list[str]:
    """The words of customize.sh's `systemctl enable` lines (continuations joined)."""
    script = (IMAGES / "customize.sh").read_text().replace("\\\n", " ")
    return [
        word
        for line in script.splitlines()
        if re.match(r"\s*in_root systemctl enable ", line)
        for word in line.split()
    ]


def test_customize_enables_lockdown() -> None:
    enabled = [word for word in _enabled_units() if word.endswith(".service")]
    assert "clawden-lockdown.service" in enabled
    assert {"clawden-seed.service", "clawden-control.service"} <= set(enabled)


def test_reclaim_timer_hands_unused_page_cache_back() -> None:
    # Free page reporting returns only free pages: the page cache must be
    # dropped now and then, and the freed pages compacted into 2 MiB blocks.
    service = read_unit(UNITS / "clawden-reclaim.service")["Service"]
    assert service["Type"] == ["oneshot"]
    (start,) = service["ExecStart"]
    script = re.fullmatch(r"/bin/sh -c '(.*)'", start)
    assert script, start
    assert [s.strip() for s in script.group(1).split("&&")] == [
        "sync",
        "echo 1 > /proc/sys/vm/drop_caches",
        "echo 1 > /proc/sys/vm/compact_memory",
    ]
    timer = read_unit(UNITS / "clawden-reclaim.timer")
    assert timer["Timer"]["OnUnitActiveSec"] and timer["Timer"]["OnBootSec"]
    assert timer["Install"]["WantedBy"] == ["timers.target"]
    assert "clawden-reclaim.timer" in _enabled_units()


def test_systemd_analyze_accepts_the_lockdown_unit(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        # The parse checks above are the check on a machine without systemd.
        return
    copy = tmp_path / LOCKDOWN.name
    copy.write_text(LOCKDOWN.read_text())
    proc = subprocess.run(
        [tool, "verify", str(copy)], capture_output=True, text=True, check=False, timeout=60
    )
    # verify warns about unknown keys or bad values on stderr but exits 0.
    assert proc.returncode == 0 and proc.stderr == "", proc.stdout + proc.stderr


def test_systemd_analyze_check_can_fail(tmp_path: Path) -> None:
    # Guards the check above: verify really reads the unit and complains.
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return
    broken = tmp_path / LOCKDOWN.name
    broken.write_text(LOCKDOWN.read_text().replace("Type=oneshot", "Type=oneshott"))
    proc = subprocess.run(
        [tool, "verify", str(broken)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert "oneshott" in proc.stderr


# ---- module blacklist -----------------------------------------------------------


def _blacklist() -> tuple[set[str], set[str]]:
    blacklisted: set[str] = set()
    refused: set[str] = set()
    for line in BLACKLIST.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"blacklist ([a-z0-9_]+)|install ([a-z0-9_]+) /bin/false", line)
        assert match, f"unexpected line in {BLACKLIST.name}: {line!r}"
        if match.group(1):
            blacklisted.add(match.group(1))
        else:
            refused.add(match.group(2))
    return blacklisted, refused


def test_unused_protocol_families_are_blacklisted_and_refused() -> None:
    blacklisted, refused = _blacklist()
    # blacklist: the kernel's alias requests (net-pf-N) find nothing;
    # install /bin/false: not even `modprobe NAME` loads it.
    assert blacklisted == refused
    assert MUST_BLACKLIST <= blacklisted, MUST_BLACKLIST - blacklisted


def test_nothing_the_guest_needs_is_blacklisted() -> None:
    blacklisted, _ = _blacklist()
    initrd = {
        line.strip()
        for line in INITRAMFS_MODULES.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {"virtio_pci", "virtio_blk", "ext4"} <= initrd
    needed = initrd | UDEV_MODULES | {"virtio_net", "ipv6", "unix", "af_packet"}
    assert not needed & blacklisted
    assert not needed & _unused_hardware()


def _unused_hardware() -> set[str]:
    names: set[str] = set()
    for line in UNUSED_HARDWARE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"blacklist ([A-Za-z0-9_]+)", line)
        assert match, f"unexpected line in {UNUSED_HARDWARE.name}: {line!r}"
        names.add(match.group(1))
    return names


def test_hardware_a_claw_never_uses_is_not_autoloaded() -> None:
    # q35's ICH9 AHCI and SMBus probing cost seconds of every boot under TCG;
    # kvm inside the guest would hand the agent /dev/kvm.
    assert {"ahci", "i2c_i801", "lpc_ich", "iTCO_wdt", "psmouse", "kvm"} <= _unused_hardware()


# ---- the claw's processes: clawden-control.service -----------------------------


def test_claw_processes_run_under_seccomp_filters() -> None:
    service = read_unit(CONTROL)["Service"]
    (syscalls,) = service["SystemCallFilter"]
    assert syscalls.startswith("~")
    assert set(syscalls[1:].split()) == {"io_uring_setup", "io_uring_enter", "io_uring_register"}
    assert service["SystemCallErrorNumber"] == ["ENOSYS"]
    families = set(words(read_unit(CONTROL), "Service", "RestrictAddressFamilies"))
    # AF_NETLINK: `ip` and `ss` read the (loopback-only) network state.
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert service["SystemCallArchitectures"] == ["native"]
    # no_new_privs moved from the whole service (where it would block the
    # host's sudo to the agent user) to every process the agent runs: the
    # helper is the only way a command reaches `claw`, and it sets it.
    assert "NoNewPrivileges" not in service
    helper = (OVERLAY / "usr/lib/clawden/as-claw").read_text()
    assert re.search(
        r"(?m)^exec env -i .* /usr/bin/setpriv .*--no-new-privs", helper.replace("\\\n", " ")
    )


def test_systemd_analyze_accepts_the_control_unit(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None or not all(Path(p).exists() for p in ("/usr/bin/socat", "/usr/sbin/sshd")):
        return  # verify also checks that ExecStart's programs exist here
    for unit in UNITS.glob("*.service"):  # its Requires= must resolve
        (tmp_path / unit.name).write_text(unit.read_text())
    proc = subprocess.run(
        [tool, "verify", str(tmp_path / CONTROL.name)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stdout + proc.stderr


# ---- the data disk --------------------------------------------------------------


def test_data_is_mounted_with_discard() -> None:
    for line in (OVERLAY / "etc/fstab").read_text().splitlines():
        fields = line.split()
        if len(fields) == 6 and fields[1] == "/data":
            assert "discard" in fields[3].split(","), line
            assert {"nosuid", "nodev"} <= set(fields[3].split(","))
            return
    raise AssertionError("no /data line in the image's fstab")
