// SPDX-License-Identifier: GPL-2.0
/*
 * my_rng - driver for the co-simulation kit's RNG PCI function (1234:cafe).
 *
 * The device is the random-number generator of a well-known virtualisation
 * tutorial: BAR0 holds RNG (0x0, each read returns the next number of glibc's
 * rand() sequence) and SEED (0x4, a write seeds it as glibc's srand()), plus
 * an ID register (0x8) so software can tell the interface version, and CAPS
 * (0xc) whose RNG64 bit says RNG64 (0x10, two numbers per 8-byte read) exists;
 * devices without CAPS read 0 there.  The register map is generated from
 * models/contract/regmap.py into cosim_regs.h.
 *
 * User space gets the tutorial's ioctl ABI on /dev/my_rng_driver (see
 * my_rng_ioctl.h), and the kernel's hw_random framework gets a source, so
 * /dev/hwrng reads the device too.
 *
 * The generator is a seeded, deterministic PRNG, not an entropy source, and
 * one sequence shared by every reader: anyone who can open the device can
 * seed it, and anyone who knows the seed knows every number.  Its output
 * deserves no entropy credit at all, so:
 *
 *  - hwrng.quality is 0.  In 6.1 (drivers/char/hw_random/core.c) hwrng_init()
 *    replaces 0 with the hwrng.default_quality module parameter, which is 0
 *    ("off") unless the administrator sets it; hwrng_fillfn() credits
 *    rc * quality * 8 / 1024 bits per read, so 0 is the only value that
 *    credits nothing (1 already credits a bit per 64 to 128 bytes read,
 *    as the remainder is carried over).  0 also ranks lowest in
 *    enable_best_rng() and hwrng_register(), which make the source of the
 *    highest quality the current one, so this PRNG never displaces a real
 *    source.
 *  - The kernel's own reads get no data: my_rng_hwrng_read() returns 0
 *    bytes in a kernel thread (the PF_KTHREAD guard).  That guarantees no
 *    credit whatever the quality says (hwrng.default_quality, the obsolete
 *    hwrng.current_quality, the rng_quality sysfs file): hwrng_fillfn(),
 *    the only caller of add_hwgenerator_randomness() (drivers/char/random.c,
 *    the only hw_random path that credits entropy), mixes and credits only
 *    what the read returned, and on 0 bytes sleeps 10 s (hwrng_msleep())
 *    and asks again.  set_current_rng() starts that thread for any quality.
 *    Reads of /dev/hwrng (rng_dev_read()) go to the reader, not the pool.
 *
 * The guard has a second reason, independent of entropy: the generator is
 * one shared sequence, and the kernel reads at times that depend on the
 * boot's timing:
 *  - the hwrng thread (hwrng_fillfn()), which reads the current source every
 *    max(1 s, uptime / 2) in the first two minutes after boot, then every
 *    minute (add_hwgenerator_randomness() sleeps crng_reseed_interval());
 *  - the early-randomness read (add_early_randomness(), mixed in without
 *    credit by add_device_randomness()) made while the source is registered.
 * One landing between a user's SEED and RAND would tear the user's
 * sequence, and a co-simulated run would no longer be reproducible.  So the
 * numbers go only to user space that asks for them: ioctls on
 * /dev/my_rng_driver and reads of /dev/hwrng.
 *
 * Every device gets its own names, from an instance number (an IDA): the
 * first keeps the tutorial's /dev/my_rng_driver and hwrng "my_rng", the
 * next ones are /dev/my_rng_driver1, hwrng "my_rng1", and so on.
 */
#include <linux/fs.h>
#include <linux/hw_random.h>
#include <linux/idr.h>
#include <linux/io.h>
/* readq: native on x86_64; elsewhere two reads, low DW first (RNG64's order) */
#include <linux/io-64-nonatomic-lo-hi.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/sched.h>
#include <linux/uaccess.h>

#include "cosim_regs.h"
#include "my_rng_ioctl.h"

#define MY_RNG_DRV_NAME		"my_rng"
#define MY_RNG_BAR		0

/* Instance numbers: 0 gets the tutorial's names, the others a suffix. */
static DEFINE_IDA(my_rng_ida);

struct my_rng {
	struct pci_dev *pdev;
	void __iomem *base;
	/* Instance number from my_rng_ida: the suffix of the names. */
	int id;
	/*
	 * Serialises every access to the generator: a SEED write and the RNG
	 * reads of one caller never interleave with another caller's, and the
	 * hwrng reads never split an ioctl user's sequence in the middle of an
	 * access.
	 */
	struct mutex lock;
	/* hw_random reads are served once registration is over. */
	bool hwrng_ready;
	/* CAPS advertises RNG64: hw_random reads take 8 bytes per access. */
	bool rng64;
	struct hwrng hwrng;
	struct miscdevice misc;
};

static u32 my_rng_next(struct my_rng *rng)
{
	/* Each read of RNG advances the generator by exactly one number. */
	return ioread32(rng->base + COSIM_RNG_REG_RNG);
}

/* misc_open() stores our struct miscdevice in private_data. */
static struct my_rng *my_rng_from_file(struct file *file)
{
	return container_of(file->private_data, struct my_rng, misc);
}

static long my_rng_ioctl(struct file *file, unsigned int cmd,
			 unsigned long arg)
{
	struct my_rng *rng = my_rng_from_file(file);
	unsigned int __user *uptr = (unsigned int __user *)arg;
	unsigned int val;

	switch (cmd) {
	case MY_RNG_IOCTL_RAND:
		mutex_lock(&rng->lock);
		val = my_rng_next(rng);
		mutex_unlock(&rng->lock);
		/*
		 * The number is consumed even if the copy faults, as a read
		 * of the register by a buggy program would consume it.
		 */
		if (copy_to_user(uptr, &val, sizeof(val)))
			return -EFAULT;
		return 0;
	case MY_RNG_IOCTL_SEED:
		/* Fetch first: a bad pointer must not touch the device. */
		if (copy_from_user(&val, uptr, sizeof(val)))
			return -EFAULT;
		mutex_lock(&rng->lock);
		/*
		 * A posted write; seeding takes the device some time, and a
		 * following RNG read completes only when the new sequence is
		 * ready, so no delay is needed here.
		 */
		iowrite32(val, rng->base + COSIM_RNG_REG_SEED);
		mutex_unlock(&rng->lock);
		return 0;
	default:
		return -ENOTTY;
	}
}

static const struct file_operations my_rng_fops = {
	.owner		= THIS_MODULE,
	.unlocked_ioctl	= my_rng_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
	.llseek		= noop_llseek,
};

/*
 * hw_random read: fill whole 32-bit numbers only and return the number of
 * bytes produced; the core calls again for the rest.  The kernel's own reads
 * (see the top of this file) get 0 bytes: the hwrng thread then sleeps 10 s
 * and asks again, without touching the device.
 *
 * With RNG64, 8 bytes come from one readq: under QEMU's x-pci-proxy-dev every
 * guest MMIO access is one round trip to the device server (tens of us), and
 * one round trip carries up to 8 bytes, so this halves the round trips of
 * 4-byte RNG reads.  The device answers the low DW first with the next
 * number, then the high DW with the one after it, so the little-endian bytes
 * are the same stream as 4-byte RNG reads give.  A 4-byte tail uses RNG.
 */
static int my_rng_hwrng_read(struct hwrng *hwrng, void *data, size_t max,
			     bool wait)
{
	struct my_rng *rng = container_of(hwrng, struct my_rng, hwrng);
	size_t done = 0;
	u64 val64;
	u32 val;

	if (!READ_ONCE(rng->hwrng_ready) || (current->flags & PF_KTHREAD))
		return 0;

	mutex_lock(&rng->lock);
	while (rng->rng64 && max - done >= sizeof(val64)) {
		val64 = readq(rng->base + COSIM_RNG_REG_RNG64);
		memcpy(data + done, &val64, sizeof(val64));
		done += sizeof(val64);
	}
	while (max - done >= sizeof(val)) {
		val = my_rng_next(rng);
		memcpy(data + done, &val, sizeof(val));
		done += sizeof(val);
	}
	mutex_unlock(&rng->lock);

	return done;
}

static void my_rng_misc_deregister(void *data)
{
	misc_deregister(data);
}

static void my_rng_ida_free(void *data)
{
	struct my_rng *rng = data;

	ida_free(&my_rng_ida, rng->id);
}

/*
 * Allocate the instance number and the names of this device: instance 0
 * keeps the tutorial's /dev/my_rng_driver (user programs open it by name)
 * and hwrng "my_rng"; instance N is /dev/my_rng_driverN and hwrng
 * "my_rngN".  Both the hwrng core (-EEXIST) and the misc core (-EBUSY)
 * refuse a name that is already registered.
 */
static int my_rng_names(struct my_rng *rng)
{
	struct device *dev = &rng->pdev->dev;
	int ret;

	rng->id = ida_alloc(&my_rng_ida, GFP_KERNEL);
	if (rng->id < 0)
		return dev_err_probe(dev, rng->id,
				     "cannot allocate an instance number\n");
	ret = devm_add_action_or_reset(dev, my_rng_ida_free, rng);
	if (ret)
		return dev_err_probe(dev, ret, "cannot add IDA cleanup\n");

	if (!rng->id) {
		rng->hwrng.name = MY_RNG_DRV_NAME;
		rng->misc.name = MY_RNG_DEVICE_NAME;
		return 0;
	}
	rng->hwrng.name = devm_kasprintf(dev, GFP_KERNEL, "%s%d",
					 MY_RNG_DRV_NAME, rng->id);
	rng->misc.name = devm_kasprintf(dev, GFP_KERNEL, "%s%d",
					MY_RNG_DEVICE_NAME, rng->id);
	if (!rng->hwrng.name || !rng->misc.name)
		return -ENOMEM;
	return 0;
}

static int my_rng_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct device *dev = &pdev->dev;
	struct my_rng *rng;
	u32 ident, caps;
	int ret;

	rng = devm_kzalloc(dev, sizeof(*rng), GFP_KERNEL);
	if (!rng)
		return -ENOMEM;
	rng->pdev = pdev;
	mutex_init(&rng->lock);

	ret = pcim_enable_device(pdev);
	if (ret)
		return dev_err_probe(dev, ret, "cannot enable device\n");

	if (pci_resource_len(pdev, MY_RNG_BAR) < COSIM_RNG_BAR0_SIZE)
		return dev_err_probe(dev, -ENODEV,
				     "BAR0 is %llu bytes, expected %u\n",
				     (unsigned long long)
				     pci_resource_len(pdev, MY_RNG_BAR),
				     COSIM_RNG_BAR0_SIZE);

	ret = pcim_iomap_regions(pdev, BIT(MY_RNG_BAR), MY_RNG_DRV_NAME);
	if (ret)
		return dev_err_probe(dev, ret, "cannot map BAR0\n");
	rng->base = pcim_iomap_table(pdev)[MY_RNG_BAR];

	/*
	 * The ID register tells a device with this register interface from
	 * anything else answering 1234:cafe (the tutorial's QEMU model has no
	 * ID and reads 0 there); all-ones means the read was not answered.
	 */
	ident = ioread32(rng->base + COSIM_RNG_REG_ID);
	if (ident != COSIM_RNG_ID_VALUE)
		return dev_err_probe(dev, -ENODEV,
				     "unexpected ID register 0x%08x, expected 0x%08x\n",
				     ident, COSIM_RNG_ID_VALUE);
	/* CAPS reads 0 on devices without it: no RNG64, the 4-byte path. */
	caps = ioread32(rng->base + COSIM_RNG_REG_CAPS);
	rng->rng64 = caps & COSIM_RNG_CAPS_RNG64;
	dev_info(dev, "RNG interface version %u, hwrng reads: %s\n",
		 ident & 0xff, rng->rng64 ? "8 bytes per access (RNG64)" :
		 "4 bytes per access (RNG)");

	pci_set_drvdata(pdev, rng);

	ret = my_rng_names(rng);
	if (ret)
		return ret;

	rng->hwrng.read = my_rng_hwrng_read;
	/* No entropy credit, lowest rank: see the top of this file. */
	rng->hwrng.quality = 0;
	ret = devm_hwrng_register(dev, &rng->hwrng);
	if (ret)
		return dev_err_probe(dev, ret, "cannot register hwrng %s\n",
				     rng->hwrng.name);
	WRITE_ONCE(rng->hwrng_ready, true);

	rng->misc.minor = MISC_DYNAMIC_MINOR;
	rng->misc.fops = &my_rng_fops;
	rng->misc.parent = dev;
	/* Only root may seed and read, as with the tutorial's device node. */
	rng->misc.mode = 0600;
	ret = misc_register(&rng->misc);
	if (ret)
		return dev_err_probe(dev, ret, "cannot register /dev/%s\n",
				     rng->misc.name);
	ret = devm_add_action_or_reset(dev, my_rng_misc_deregister, &rng->misc);
	if (ret)
		return dev_err_probe(dev, ret, "cannot add misc cleanup\n");

	return 0;
}

static const struct pci_device_id my_rng_ids[] = {
	{ PCI_DEVICE(COSIM_PCI_VENDOR_ID, COSIM_PCI_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, my_rng_ids);

static struct pci_driver my_rng_driver = {
	.name		= MY_RNG_DRV_NAME,
	.id_table	= my_rng_ids,
	.probe		= my_rng_probe,
};
module_pci_driver(my_rng_driver);

MODULE_DESCRIPTION("Co-simulation kit RNG PCI device (glibc rand() in RTL)");
MODULE_LICENSE("GPL");
