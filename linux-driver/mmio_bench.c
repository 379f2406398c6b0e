// SPDX-License-Identifier: GPL-2.0
/*
 * mmio_bench - time MMIO reads or writes of a PCI device's BAR from the guest.
 *
 * Benchmark only (bench/run.py), never part of the sign-off.  On load it finds
 * the PCI function vendor:device, maps BAR `bar`, times `count` ioread32 of
 * `offset` (or, with write=1, `count` iowrite32 of `value` there followed by
 * one ioread32, which cannot complete before the posted writes ahead of it,
 * PCI 3.0 ordering rules) with ktime and prints one line:
 *
 *   mmio_bench: 1234:11e8 bar0+0x0 reads=10000 ns=123456789
 *   mmio_bench: 1234:cafe bar0+0x4 writes=10000 ns=123456789
 *
 * It binds to nothing (pci_get_device), so it can time QEMU's built-in edu
 * device (1234:11e8, the native floor) and our RNG function alike.  Reading
 * the RNG register advances the generator: never load it in a run whose
 * numbers are checked.  Load, read the log, unload; module init always
 * succeeds after a measurement so the caller can insmod it again.
 */
#include <linux/io.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/sched.h>

static ushort vendor = 0x1234;
module_param(vendor, ushort, 0444);
MODULE_PARM_DESC(vendor, "PCI vendor ID of the device to read");

static ushort device = 0x11e8;
module_param(device, ushort, 0444);
MODULE_PARM_DESC(device, "PCI device ID of the device to read");

static uint bar;
module_param(bar, uint, 0444);
MODULE_PARM_DESC(bar, "BAR to map (default 0)");

static uint offset;
module_param(offset, uint, 0444);
MODULE_PARM_DESC(offset, "byte offset of the 32-bit register in the BAR");

static uint count = 10000;
module_param(count, uint, 0444);
MODULE_PARM_DESC(count, "number of accesses to time");

static bool write;
module_param(write, bool, 0444);
MODULE_PARM_DESC(write, "time iowrite32 of `value` instead of ioread32");

static uint value;
module_param(value, uint, 0444);
MODULE_PARM_DESC(value, "the value written with write=1");

static int __init mmio_bench_init(void)
{
	struct pci_dev *pdev;
	void __iomem *base;
	u64 t0, ns;
	u32 sink = 0;
	uint i;
	int ret;

	if (bar >= PCI_STD_NUM_BARS || count == 0)
		return -EINVAL;
	pdev = pci_get_device(vendor, device, NULL);
	if (!pdev) {
		pr_err("mmio_bench: no PCI device %04x:%04x\n", vendor, device);
		return -ENODEV;
	}
	if (offset > pci_resource_len(pdev, bar) - 4 ||
	    !(pci_resource_flags(pdev, bar) & IORESOURCE_MEM)) {
		pr_err("mmio_bench: %s BAR%u has no 32-bit register at 0x%x\n",
		       pci_name(pdev), bar, offset);
		ret = -EINVAL;
		goto put;
	}
	/* Memory decoding on; a reference count if a driver is bound. */
	ret = pci_enable_device_mem(pdev);
	if (ret)
		goto put;
	base = pci_iomap(pdev, bar, offset + 4);
	if (!base) {
		ret = -ENOMEM;
		goto disable;
	}

	t0 = ktime_get_ns();
	for (i = 0; i < count; i++) {
		if (write)
			iowrite32(value, base + offset);
		else
			sink ^= ioread32(base + offset);
		/* Yield: a slow simulated device would trip soft lockups. */
		if ((i & 255) == 255)
			cond_resched();
	}
	if (write)
		sink = ioread32(base + offset);	/* flushes the posted writes */
	ns = ktime_get_ns() - t0;

	pr_info("mmio_bench: %04x:%04x bar%u+0x%x %s=%u ns=%llu xor=%08x\n",
		vendor, device, bar, offset, write ? "writes" : "reads", count,
		ns, sink);
	pci_iounmap(pdev, base);
disable:
	pci_disable_device(pdev);
put:
	pci_dev_put(pdev);
	return ret;
}

static void __exit mmio_bench_exit(void)
{
}

module_init(mmio_bench_init);
module_exit(mmio_bench_exit);

MODULE_DESCRIPTION("Times MMIO reads of a PCI BAR (co-simulation benchmark)");
MODULE_LICENSE("GPL");
