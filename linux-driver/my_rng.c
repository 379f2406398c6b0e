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
 *
 * /dev/hwrng's bytes (docs/hwrng.md): every number n of the sequence gives
 * its low 24 bits, low byte first (n & 0xff, n >> 8 & 0xff, n >> 16 & 0xff),
 * and the byte stream is the concatenation in sequence order, cut into
 * reads at any byte (the rest of a number waits for the next read).  The
 * numbers are glibc's rand(), 0..RAND_MAX = 2^31 - 1: their top bit is
 * always 0, so whole 32-bit words fail any bias test (rngtest's FIPS 140-2
 * monobit and poker tests); bits 0..23 are usable.
 *
 * Where CAPS advertises DMA (docs/dma.md), /dev/hwrng's numbers come from
 * DMA transfers of MY_RNG_DMA_BLOCK bytes into a coherent buffer, and reads
 * are served from it until it is used up.  So hwrng prefetches: a RAND ioctl
 * after a hwrng read returns the number after the block, not the one after
 * the bytes read.  A SEED ioctl discards the buffer (and the rest of a
 * number): the next hwrng bytes come from the numbers after the seed.  The
 * end of a transfer is awaited by its interrupt (MSI, else INTx), or by
 * polling DMA_STATUS where no interrupt vector exists or where the first
 * transfer's interrupt never arrives (QEMU's x-pci-proxy-dev delivers none
 * under TCG).  A transfer that ends with ERROR or does not end in time is
 * logged, and that read is served by MMIO reads of the numbers instead
 * (same mapping; the failed transfer's numbers are lost: the device has
 * consumed them).  Without CAPS.DMA every read is served by MMIO.
 */
#include <linux/atomic.h>
#include <linux/completion.h>
#include <linux/dma-mapping.h>
#include <linux/fs.h>
#include <linux/hw_random.h>
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/io.h>
/* readq: native on x86_64; elsewhere two reads, low DW first (RNG64's order) */
#include <linux/io-64-nonatomic-lo-hi.h>
#include <linux/iopoll.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/sched.h>
#include <linux/sizes.h>
#include <linux/sysfs.h>
#include <linux/uaccess.h>

#include "cosim_regs.h"
#include "my_rng_ioctl.h"

#define MY_RNG_DRV_NAME		"my_rng"
#define MY_RNG_BAR		0

/* Bytes of /dev/hwrng per number: its low 24 bits (see the top of the file) */
#define MY_RNG_NUMBER_BYTES	3
/* MMIO reads: numbers fetched at a time (on the stack) */
#define MY_RNG_MMIO_CHUNK	16

/*
 * One DMA transfer: 16 KiB, 4096 numbers, 12288 bytes of /dev/hwrng (192
 * of the hw_random core's 64-byte reads).  Whole 4 KiB pages, as the engine
 * flush-reads per page; far below COSIM_RNG_DMA_MAX_LEN.  Through the
 * co-simulation bridge (docs/dma.md, "Speed") a transfer takes ~30 ms on
 * the golden model and ~1 s on Icarus: larger blocks would make a small
 * read wait longer and a SEED discard more, smaller ones spend more of the
 * time on starting transfers and their interrupts.
 */
#define MY_RNG_DMA_BLOCK	SZ_16K
#define MY_RNG_DMA_NUMBERS	(MY_RNG_DMA_BLOCK / sizeof(u32))
static_assert(MY_RNG_DMA_BLOCK <= COSIM_RNG_DMA_MAX_LEN);

/* The longest a transfer may take, and how often DMA_STATUS is polled */
#define MY_RNG_DMA_TIMEOUT_US	(10 * USEC_PER_SEC)
#define MY_RNG_DMA_POLL_US	20
/*
 * How long the interrupt may take, first while the transfer runs, then once
 * more after DMA_STATUS says it ended (an MSI is in flight a little longer).
 */
#define MY_RNG_IRQ_WAIT_MS	1000

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
	/* CAPS advertises RNG64: MMIO reads take 8 bytes per access. */
	bool rng64;
	/* The rest of the last number packed, low byte first, and its length */
	u32 pend;
	unsigned int pend_len;

	/* CAPS advertises DMA: hw_random reads are served from buf. */
	bool dma;
	/* MY_RNG_DMA_NUMBERS numbers, little-endian as the device wrote them */
	__le32 *buf;
	dma_addr_t buf_dma;
	/* Numbers of buf: the next one to use, how many are valid */
	unsigned int buf_pos;
	unsigned int buf_len;
	/* Wait for the interrupt (false: poll DMA_STATUS) */
	bool use_irq;
	/* An interrupt has ended a transfer: this platform delivers them */
	bool irq_seen;
	struct completion dma_done;
	/* sysfs: transfers ended DONE, ended otherwise, interrupts handled */
	unsigned long dma_transfers;
	unsigned long dma_errors;
	atomic_long_t irqs;

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
		/* The sequence restarts: prefetched numbers are stale. */
		rng->buf_pos = 0;
		rng->buf_len = 0;
		rng->pend_len = 0;
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

/* Move what is left of the last number packed to out[*done..max). */
static void my_rng_drain(struct my_rng *rng, u8 *out, size_t *done,
			 size_t max)
{
	while (rng->pend_len && *done < max) {
		out[(*done)++] = rng->pend & 0xff;
		rng->pend >>= 8;
		rng->pend_len--;
	}
}

/*
 * Append number n's bytes (see the top of the file); the ones that do not
 * fit wait for the next read.  Only called with nothing pending.
 */
static void my_rng_put(struct my_rng *rng, u32 n, u8 *out, size_t *done,
		       size_t max)
{
	rng->pend = n & GENMASK(MY_RNG_NUMBER_BYTES * 8 - 1, 0);
	rng->pend_len = MY_RNG_NUMBER_BYTES;
	my_rng_drain(rng, out, done, max);
}

/*
 * The next count numbers by MMIO.  With RNG64, two per readq: under QEMU's
 * x-pci-proxy-dev every guest MMIO access is one round trip to the device
 * server (tens of us), and one round trip carries up to 8 bytes.  The
 * device answers the low DW first with the next number, then the high DW
 * with the one after it, so the order is that of 4-byte RNG reads.
 */
static void my_rng_mmio_numbers(struct my_rng *rng, u32 *nums, size_t count)
{
	size_t i = 0;
	u64 val64;

	while (rng->rng64 && count - i >= 2) {
		val64 = readq(rng->base + COSIM_RNG_REG_RNG64);
		nums[i++] = lower_32_bits(val64);
		nums[i++] = upper_32_bits(val64);
	}
	while (i < count)
		nums[i++] = my_rng_next(rng);
}

/* Fill out[*done..max) by MMIO, reading only the numbers needed. */
static void my_rng_read_mmio(struct my_rng *rng, u8 *out, size_t *done,
			     size_t max)
{
	u32 nums[MY_RNG_MMIO_CHUNK];
	size_t i, count;

	while (*done < max) {
		count = min_t(size_t, ARRAY_SIZE(nums),
			      DIV_ROUND_UP(max - *done, MY_RNG_NUMBER_BYTES));
		my_rng_mmio_numbers(rng, nums, count);
		for (i = 0; i < count; i++)
			my_rng_put(rng, nums[i], out, done, max);
	}
}

/*
 * Wait for DMA_STATUS.BUSY to clear.  All-ones means the read was not
 * answered (the device is gone): it has ERROR set, so it ends the wait.
 */
static int my_rng_dma_idle(struct my_rng *rng, u32 *status)
{
	u32 val;
	int ret;

	ret = read_poll_timeout(ioread32, val,
				!(val & COSIM_RNG_DMA_STATUS_BUSY) ||
				val == U32_MAX,
				MY_RNG_DMA_POLL_US, MY_RNG_DMA_TIMEOUT_US,
				false, rng->base + COSIM_RNG_REG_DMA_STATUS);
	*status = val;
	return ret;
}

/*
 * Stop a transfer that does not end: with Bus Master Enable clear, the
 * engine ends with ERROR at its next request and issues none
 * (docs/dma.md).
 */
static void my_rng_dma_stop(struct my_rng *rng)
{
	u32 status;

	pci_clear_master(rng->pdev);
	if (my_rng_dma_idle(rng, &status))
		dev_err(&rng->pdev->dev,
			"DMA engine still busy with Bus Master off (DMA_STATUS 0x%08x)\n",
			status);
}

/*
 * A transfer ended without its interrupt.  If no interrupt ever arrived,
 * this platform does not deliver them (QEMU's x-pci-proxy-dev under TCG):
 * poll from now on, with IRQ_EN clear.
 */
static void my_rng_irq_missing(struct my_rng *rng)
{
	struct device *dev = &rng->pdev->dev;

	/* INT_STATUS.DMA set but not (yet) handled: clear it, drop INTx. */
	iowrite32(COSIM_RNG_INT_STATUS_DMA,
		  rng->base + COSIM_RNG_REG_INT_STATUS);
	if (rng->irq_seen) {
		dev_warn_ratelimited(dev, "DMA interrupt missing, transfer polled\n");
		return;
	}
	rng->use_irq = false;
	dev_info(dev, "hwrng reads: DMA, polling (no interrupt arrived)\n");
}

static unsigned long my_rng_irq_wait(struct my_rng *rng)
{
	unsigned long timeout = msecs_to_jiffies(MY_RNG_IRQ_WAIT_MS);

	return wait_for_completion_timeout(&rng->dma_done, timeout);
}

/*
 * Refill buf with one transfer; 0 when it ended DONE.  Called with the lock
 * held: the engine and the MMIO reads share one generator, and remove waits
 * for the lock before it frees buf.
 */
static int my_rng_dma_fill(struct my_rng *rng)
{
	struct device *dev = &rng->pdev->dev;
	bool irq = rng->use_irq;
	unsigned long left = 0;
	u32 status;

	rng->buf_pos = 0;
	rng->buf_len = 0;
	if (irq)
		reinit_completion(&rng->dma_done);
	iowrite32(lower_32_bits(rng->buf_dma),
		  rng->base + COSIM_RNG_REG_DMA_ADDR);
	iowrite32(upper_32_bits(rng->buf_dma),
		  rng->base + COSIM_RNG_REG_DMA_ADDR + 4);
	iowrite32(MY_RNG_DMA_BLOCK, rng->base + COSIM_RNG_REG_DMA_LEN);
	iowrite32(COSIM_RNG_DMA_CTRL_START |
		  (irq ? COSIM_RNG_DMA_CTRL_IRQ_EN : 0),
		  rng->base + COSIM_RNG_REG_DMA_CTRL);

	if (irq)
		left = my_rng_irq_wait(rng);
	/* After the interrupt one read; without it, the polling. */
	if (my_rng_dma_idle(rng, &status)) {
		dev_warn_ratelimited(dev, "DMA transfer timed out (DMA_STATUS 0x%08x), reading by MMIO\n",
				     status);
		my_rng_dma_stop(rng);
		pci_set_master(rng->pdev);
		WRITE_ONCE(rng->dma_errors, rng->dma_errors + 1);
		return -ETIMEDOUT;
	}
	if (irq && !left)
		left = my_rng_irq_wait(rng);
	if (irq && left)
		rng->irq_seen = true;
	else if (irq)
		my_rng_irq_missing(rng);

	if ((status & COSIM_RNG_DMA_STATUS_ERROR) ||
	    !(status & COSIM_RNG_DMA_STATUS_DONE)) {
		dev_warn_ratelimited(dev, "DMA transfer failed (DMA_STATUS 0x%08x), reading by MMIO\n",
				     status);
		WRITE_ONCE(rng->dma_errors, rng->dma_errors + 1);
		return -EIO;
	}
	/*
	 * ioread32() of DMA_STATUS orders the buffer reads after it
	 * (Documentation/memory-barriers.txt, "Kernel I/O barrier effects").
	 */
	rng->buf_len = MY_RNG_DMA_NUMBERS;
	WRITE_ONCE(rng->dma_transfers, rng->dma_transfers + 1);
	return 0;
}

/* Fill out[*done..max) from buf; false if a transfer failed. */
static bool my_rng_read_dma(struct my_rng *rng, u8 *out, size_t *done,
			    size_t max)
{
	while (*done < max) {
		if (rng->buf_pos == rng->buf_len && my_rng_dma_fill(rng))
			return false;
		my_rng_put(rng, le32_to_cpu(rng->buf[rng->buf_pos++]), out,
			   done, max);
	}
	return true;
}

/*
 * hw_random read: all max bytes (the core asks for at most 64 per call),
 * from DMA or MMIO, in the mapping described at the top of the file.  The
 * kernel's own reads (see the top of this file) get 0 bytes: the hwrng
 * thread then sleeps 10 s and asks again, without touching the device.
 */
static int my_rng_hwrng_read(struct hwrng *hwrng, void *data, size_t max,
			     bool wait)
{
	struct my_rng *rng = container_of(hwrng, struct my_rng, hwrng);
	size_t done = 0;

	if (!READ_ONCE(rng->hwrng_ready) || (current->flags & PF_KTHREAD))
		return 0;

	mutex_lock(&rng->lock);
	my_rng_drain(rng, data, &done, max);
	if (!rng->dma || !my_rng_read_dma(rng, data, &done, max))
		my_rng_read_mmio(rng, data, &done, max);
	mutex_unlock(&rng->lock);

	return done;
}

/*
 * The interrupt: INT_STATUS.DMA says a transfer ended.  The INTx line may
 * be shared, so 0 there is someone else's interrupt; all-ones is a read
 * the device did not answer.  The read back flushes the posted W1C write,
 * so INTx is low before the handler returns.
 */
static irqreturn_t my_rng_irq(int irq, void *data)
{
	struct my_rng *rng = data;
	u32 status;

	status = ioread32(rng->base + COSIM_RNG_REG_INT_STATUS);
	if (!status || status == U32_MAX)
		return IRQ_NONE;
	iowrite32(status, rng->base + COSIM_RNG_REG_INT_STATUS);
	ioread32(rng->base + COSIM_RNG_REG_INT_STATUS);
	atomic_long_inc(&rng->irqs);
	complete(&rng->dma_done);
	return IRQ_HANDLED;
}

/*
 * Before buf is freed (devm actions run in reverse order: this one, added
 * after the buffer and the interrupt, runs before both are released): no
 * transfer may be running or start.  Transfers run under the lock; one that
 * did not end is waited for, then Bus Master Enable is cleared.
 */
static void my_rng_dma_quiesce(void *data)
{
	struct my_rng *rng = data;
	u32 status;

	mutex_lock(&rng->lock);
	if (my_rng_dma_idle(rng, &status))
		dev_warn(&rng->pdev->dev,
			 "DMA still busy at remove (DMA_STATUS 0x%08x)\n",
			 status);
	pci_clear_master(rng->pdev);
	iowrite32(COSIM_RNG_INT_STATUS_DMA,
		  rng->base + COSIM_RNG_REG_INT_STATUS);
	rng->buf_len = 0;
	mutex_unlock(&rng->lock);
}

/*
 * DMA set-up: a 64-bit mask, the coherent buffer, Bus Master, and one
 * interrupt vector (MSI, else INTx).  Vectors of a pcim-enabled device are
 * freed by devres (pcim_setup_msi_release() in drivers/pci/msi/msi.c).
 * Without a vector, transfers are polled.  *mode: how the end of a
 * transfer is awaited, for the probe's log line.
 */
static int my_rng_dma_init(struct my_rng *rng, const char **mode)
{
	struct pci_dev *pdev = rng->pdev;
	struct device *dev = &pdev->dev;
	int ret, irq;

	ret = dma_set_mask_and_coherent(dev, DMA_BIT_MASK(64));
	if (ret)
		return dev_err_probe(dev, ret, "no 64-bit DMA mask\n");
	rng->buf = dmam_alloc_coherent(dev, MY_RNG_DMA_BLOCK, &rng->buf_dma,
				       GFP_KERNEL);
	if (!rng->buf)
		return dev_err_probe(dev, -ENOMEM,
				     "cannot allocate the DMA buffer\n");
	init_completion(&rng->dma_done);
	pci_set_master(pdev);

	*mode = "polling (no interrupt vector)";
	ret = pci_alloc_irq_vectors(pdev, 1, 1, PCI_IRQ_MSI | PCI_IRQ_LEGACY);
	if (ret < 0) {
		dev_warn(dev, "no interrupt vector (%d): polling\n", ret);
	} else {
		irq = pci_irq_vector(pdev, 0);
		ret = devm_request_irq(dev, irq, my_rng_irq, IRQF_SHARED,
				       rng->hwrng.name, rng);
		if (ret)
			return dev_err_probe(dev, ret, "no IRQ %d\n", irq);
		rng->use_irq = true;
		*mode = pdev->msi_enabled ? "interrupt MSI" : "interrupt INTx";
	}

	ret = devm_add_action_or_reset(dev, my_rng_dma_quiesce, rng);
	if (ret)
		return dev_err_probe(dev, ret, "cannot add DMA cleanup\n");
	rng->dma = true;
	return 0;
}

/* sysfs, read-only: what the DMA path did (the sign-off checks them). */
static ssize_t dma_transfers_show(struct device *dev,
				  struct device_attribute *attr, char *buf)
{
	struct my_rng *rng = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%lu\n", READ_ONCE(rng->dma_transfers));
}
static DEVICE_ATTR_RO(dma_transfers);

static ssize_t dma_errors_show(struct device *dev,
			       struct device_attribute *attr, char *buf)
{
	struct my_rng *rng = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%lu\n", READ_ONCE(rng->dma_errors));
}
static DEVICE_ATTR_RO(dma_errors);

static ssize_t irqs_handled_show(struct device *dev,
				 struct device_attribute *attr, char *buf)
{
	struct my_rng *rng = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%ld\n", atomic_long_read(&rng->irqs));
}
static DEVICE_ATTR_RO(irqs_handled);

static struct attribute *my_rng_attrs[] = {
	&dev_attr_dma_transfers.attr,
	&dev_attr_dma_errors.attr,
	&dev_attr_irqs_handled.attr,
	NULL
};
ATTRIBUTE_GROUPS(my_rng);

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
	const char *mode, *irq_mode = NULL;
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
	/* CAPS reads 0 on devices without it: no RNG64, no DMA. */
	caps = ioread32(rng->base + COSIM_RNG_REG_CAPS);
	rng->rng64 = caps & COSIM_RNG_CAPS_RNG64;
	mode = rng->rng64 ? "8 bytes per access (RNG64)" :
		"4 bytes per access (RNG)";

	pci_set_drvdata(pdev, rng);

	ret = my_rng_names(rng);
	if (ret)
		return ret;

	if (caps & COSIM_RNG_CAPS_DMA) {
		ret = my_rng_dma_init(rng, &irq_mode);
		if (ret)
			return ret;
	}
	if (rng->dma)
		dev_info(dev, "RNG interface version %u, hwrng reads: DMA, %s\n",
			 ident & 0xff, irq_mode);
	else
		dev_info(dev, "RNG interface version %u, hwrng reads: %s\n",
			 ident & 0xff, mode);

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
	.dev_groups	= my_rng_groups,
};
module_pci_driver(my_rng_driver);

MODULE_DESCRIPTION("Co-simulation kit RNG PCI device (glibc rand() in RTL)");
MODULE_LICENSE("GPL");
