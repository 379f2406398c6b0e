"""The golden device model: config space, BAR0 decode, RNG registers, debugcon, UR rules."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, NamedTuple, TypeVar

import pytest

from models.contract.regmap import (
    BAR0_TEST_BASE,
    CAPS_DMA,
    CAPS_RNG64,
    COMMAND_MEMORY,
    COMMAND_WRITABLE,
    RNG_CAPS_VALUE,
    RNG_ID_VALUE,
    STATUS_CAP_LIST,
)
from models.contract.transaction import Host, Kind, Request, Status
from models.device import Device

BAR = BAR0_TEST_BASE


def enumerate_and_enable(host: Host) -> None:
    async def run() -> None:
        await host.cfg_write(0x10, BAR)
        await host.cfg_write(0x04, COMMAND_MEMORY, 2)

    asyncio.run(run())


class Bench(NamedTuple):
    device: Device
    host: Host
    console: bytearray


@pytest.fixture
def dev() -> Bench:
    console = bytearray()
    device = Device(console_sink=console.extend)
    return Bench(device, Host(device), console)


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_identity_reads_as_qemu_proxy_reads_it(dev: Bench) -> None:
    _, host, _ = dev
    assert run(host.cfg_read(0x00, 2)) == 0x1234
    assert run(host.cfg_read(0x02, 2)) == 0xCAFE
    assert run(host.cfg_read(0x08, 1)) == 0x10
    assert run(host.cfg_read(0x09, 4)) & 0xFFFFFF == 0x00FF00
    assert run(host.cfg_read(0x0A, 2)) == 0x00FF
    assert run(host.cfg_read(0x2C, 2)) == 0x1AF4
    assert run(host.cfg_read(0x2E, 2)) == 0x1100
    assert run(host.cfg_read(0x3D, 1)) == 1


def test_bar_sizing_reads_back_the_4k_mask_and_others_read_zero(dev: Bench) -> None:
    _, host, _ = dev
    for bar in (0x10, 0x14, 0x18, 0x1C, 0x20, 0x24, 0x28, 0x30):
        old = run(host.cfg_read(bar))
        run(host.cfg_write(bar, 0xFFFF_FFFF))
        size = run(host.cfg_read(bar))
        run(host.cfg_write(bar, old))
        expected = 0xFFFF_F000 if bar == 0x10 else 0
        assert size == expected, f"BAR at {bar:#x} sized {size:#x}, expected {expected:#x}"


def test_command_keeps_only_writable_bits_and_status_is_read_only(dev: Bench) -> None:
    _, host, _ = dev
    run(host.cfg_write(0x04, 0xFFFF_FFFF))
    assert run(host.cfg_read(0x04)) == COMMAND_WRITABLE | STATUS_CAP_LIST


def test_interrupt_line_is_writable_and_pin_is_not(dev: Bench) -> None:
    _, host, _ = dev
    run(host.cfg_write(0x3C, 0xFFFF))
    assert run(host.cfg_read(0x3C, 2)) == 0x01FF


def test_memory_is_unsupported_until_command_mem_is_set(dev: Bench) -> None:
    device, host, _ = dev
    run(host.cfg_write(0x10, BAR))
    cpl = device.handle(Request(Kind.MEM_READ, BAR + 8))
    assert cpl is not None and cpl.status == Status.UR
    assert run(host.mem_read(BAR + 8)) == 0xFFFF_FFFF
    run(host.cfg_write(0x04, COMMAND_MEMORY, 2))
    assert run(host.mem_read(BAR + 8)) == RNG_ID_VALUE


def test_addresses_outside_bar0_are_unsupported(dev: Bench) -> None:
    device, host, _ = dev
    enumerate_and_enable(host)
    for addr in (BAR - 4, BAR + 0x1000, BAR + (1 << 32)):
        cpl = device.handle(Request(Kind.MEM_READ, addr))
        assert cpl is not None and cpl.status == Status.UR, f"{addr:#x} was claimed"


def test_rng_sequence_after_seed_equals_glibc(dev: Bench, glibc: Callable) -> None:
    _, host, _ = dev
    enumerate_and_enable(host)
    assert [run(host.mem_read(BAR)) for _ in range(5)] == glibc(1, 5)
    for seed in (0, 0x8000_0000, 0xFFFF_FFFF, 12345):
        run(host.mem_write(BAR + 4, seed))
        got = [run(host.mem_read(BAR)) for _ in range(100)]
        assert got == glibc(seed, 100), f"seed {seed:#x}"


def test_narrow_rng_read_advances_and_returns_its_lanes(dev: Bench, glibc: Callable) -> None:
    _, host, _ = dev
    enumerate_and_enable(host)
    expected = glibc(1, 3)
    assert run(host.mem_read(BAR + 1, 1)) == (expected[0] >> 8) & 0xFF
    assert run(host.mem_read(BAR + 2, 2)) == expected[1] >> 16
    assert run(host.mem_read(BAR)) == expected[2]


def test_partial_seed_write_is_ignored_and_seed_reads_zero(dev: Bench, glibc: Callable) -> None:
    _, host, _ = dev
    enumerate_and_enable(host)
    run(host.mem_write(BAR + 4, 0x55, 1))
    assert run(host.mem_read(BAR + 4)) == 0
    assert run(host.mem_read(BAR)) == glibc(1, 1)[0]


def test_unused_offsets_read_zero_and_ignore_writes(dev: Bench) -> None:
    _, host, _ = dev
    enumerate_and_enable(host)
    for off in (0x18, 0x1C, 0x800, 0xFFC):
        run(host.mem_write(BAR + off, 0xFFFF_FFFF))
        assert run(host.mem_read(BAR + off)) == 0, f"offset {off:#x}"


def test_caps_advertises_rng64_and_dma_and_ignores_writes(dev: Bench) -> None:
    _, host, _ = dev
    enumerate_and_enable(host)
    run(host.mem_write(BAR + 0xC, 0))
    caps = run(host.mem_read(BAR + 0xC))
    assert caps == RNG_CAPS_VALUE == CAPS_RNG64 | CAPS_DMA, (
        f"CAPS reads {caps:#x}, expected RNG64 | DMA")


def test_rng64_8_byte_reads_give_the_glibc_stream_two_numbers_at_a_time(
        dev: Bench, glibc: Callable) -> None:
    _, host, _ = dev
    enumerate_and_enable(host)
    for seed in (1, 0, 0x8000_0000, 0xFFFF_FFFF, 12345):
        if seed != 1:
            run(host.mem_write(BAR + 4, seed))
        got = [run(host.mem_read(BAR + 0x10, 8)) for _ in range(50)]
        stream = b"".join(v.to_bytes(8, "little") for v in got)
        want = b"".join(v.to_bytes(4, "little") for v in glibc(seed, 100))
        assert stream == want, f"seed {seed:#x}: 8-byte RNG64 reads differ from glibc's stream"


def test_rng64_dw_reads_alone_and_rng_reads_share_one_sequence(
        dev: Bench, glibc: Callable) -> None:
    _, host, _ = dev
    enumerate_and_enable(host)
    run(host.mem_write(BAR + 4, 77))
    got = [run(host.mem_read(BAR + off)) for off in (0x14, 0x10, 0x0, 0x14, 0x14, 0x10)]
    assert got == glibc(77, 6), f"DW reads of 0x14/0x10/RNG: {got}, glibc {glibc(77, 6)}"
    run(host.mem_write(BAR + 0x10, 0xFFFF_FFFF_FFFF_FFFF, 8))  # ignored, no advance
    assert run(host.mem_read(BAR + 0x16, 2)) == glibc(77, 7)[6] >> 16, "a narrow read of 0x16"


def test_debugcon_bytes_arrive_in_order_and_read_returns_e9(dev: Bench) -> None:
    _, host, console = dev
    for b in b"hello from Linux\n":
        run(host.io_write(0xE9, b))
    assert bytes(console) == b"hello from Linux\n"
    assert run(host.io_read(0xE9)) == 0xE9


def test_io_to_other_ports_is_unsupported(dev: Bench) -> None:
    device, host, console = dev
    assert run(host.io_read(0xE8)) == 0xFF
    cpl = device.handle(Request(Kind.IO_WRITE, 0x3F8, 0b0001, 0x41))
    assert cpl is not None and cpl.status == Status.UR and not console


def test_reset_restores_config_and_the_srand_1_state(dev: Bench, glibc: Callable) -> None:
    device, host, _ = dev
    enumerate_and_enable(host)
    run(host.mem_write(BAR + 4, 99))
    run(device.reset())
    assert run(host.cfg_read(0x10)) == 0 and run(host.cfg_read(0x04)) == STATUS_CAP_LIST
    enumerate_and_enable(host)
    assert run(host.mem_read(BAR)) == glibc(1, 1)[0]
