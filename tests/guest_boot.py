"""Boot a guest script under stock QEMU against the model backend, for the guest tests."""

from __future__ import annotations

from pathlib import Path

from qbridge import image
from qbridge.launch import LaunchConfig, RunResult, Timeouts, launch


def boot_on_model(script: str, out: Path, name: str) -> RunResult:
    """Build an initramfs running `script` and boot it; the result, passed or not."""
    initrd = image.build_initramfs(script, out / f"{name}.cpio")
    return launch(LaunchConfig(kernel=image.vmlinux(), initrd=initrd, out=out,
                               backend="model", timeouts=Timeouts(run=240.0)))


def assert_clean(res: RunResult, tail: int = 30) -> RunResult:
    """Fail (never skip) when the boot itself failed: QEMU, kernel or server broken."""
    assert res.ok, (f"the boot failed ({res.failed}: {res.reason}); serial log tail:\n"
                    + "\n".join(res.serial_lines[-tail:]))
    return res
