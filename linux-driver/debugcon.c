// SPDX-License-Identifier: GPL-2.0
/*
 * debugcon - /dev/debugcon, a character device for QEMU's debug console.
 *
 * QEMU's isa-debugcon (and the co-simulation kit's RTL behind it) is a
 * one-byte I/O port, 0xe9 on x86: every byte written to it is appended to
 * the console output, and a read returns 0xe9 so software can detect it
 * (QEMU's isa-debugcon model).  This driver exposes it to user space:
 *
 *   - /dev/debugcon, mode 0666: any user may write to the console;
 *   - one opener at a time: a second open() gets -EBUSY until the first
 *     file is released, so the output of two writers never interleaves;
 *   - write() sends every byte, in order, with outb() and returns the count.
 *
 * The port is claimed with request_region() so nothing else in the kernel
 * drives it, and probed at load: without a debug console there (a read gives
 * 0xff on an unclaimed port) the module refuses to load rather than silently
 * dropping everything written to it.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/fs.h>
#include <linux/io.h>
#include <linux/ioport.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/uaccess.h>

#include "cosim_regs.h"

/*
 * A fixed name is right here, unlike my_rng's per-device names: there is one
 * debug console per machine, at the fixed I/O port 0xe9 that this module
 * claims with request_region(), and no bus enumerates it, so the module
 * drives exactly one device and /dev/debugcon cannot clash with a second.
 */
#define DEBUGCON_NAME		"debugcon"
/* Bytes copied from user space per outb loop; small enough for the stack. */
#define DEBUGCON_CHUNK		64

/* Bit 0 set while /dev/debugcon is open. */
static unsigned long debugcon_busy;

static int debugcon_open(struct inode *inode, struct file *file)
{
	if (test_and_set_bit_lock(0, &debugcon_busy))
		return -EBUSY;
	return 0;
}

static int debugcon_release(struct inode *inode, struct file *file)
{
	clear_bit_unlock(0, &debugcon_busy);
	return 0;
}

static ssize_t debugcon_write(struct file *file, const char __user *ubuf,
			      size_t count, loff_t *ppos)
{
	u8 chunk[DEBUGCON_CHUNK];
	size_t done = 0;
	size_t n, i;

	while (done < count) {
		n = min_t(size_t, count - done, sizeof(chunk));
		if (copy_from_user(chunk, ubuf + done, n))
			/* Report what was sent before the bad address. */
			return done ? done : -EFAULT;
		/*
		 * Each outb() completes only when the console accepted the
		 * byte (a back-pressured sink makes it late, never lossy).
		 */
		for (i = 0; i < n; i++)
			outb(chunk[i], COSIM_DEBUGCON_PORT);
		done += n;

		if (done < count) {
			if (fatal_signal_pending(current))
				return done;
			cond_resched();
		}
	}

	return done;
}

static const struct file_operations debugcon_fops = {
	.owner		= THIS_MODULE,
	.open		= debugcon_open,
	.release	= debugcon_release,
	.write		= debugcon_write,
	.llseek		= noop_llseek,
};

static struct miscdevice debugcon_misc = {
	.minor	= MISC_DYNAMIC_MINOR,
	.name	= DEBUGCON_NAME,
	.fops	= &debugcon_fops,
	.mode	= 0666,
};

static int __init debugcon_init(void)
{
	u8 probe;
	int ret;

	if (!request_region(COSIM_DEBUGCON_PORT, 1, DEBUGCON_NAME)) {
		pr_err("I/O port 0x%x is in use\n", COSIM_DEBUGCON_PORT);
		return -EBUSY;
	}

	probe = inb(COSIM_DEBUGCON_PORT);
	if (probe != COSIM_DEBUGCON_READ_VALUE) {
		pr_err("no debug console at port 0x%x (read 0x%02x, expected 0x%02x)\n",
		       COSIM_DEBUGCON_PORT, probe, COSIM_DEBUGCON_READ_VALUE);
		ret = -ENODEV;
		goto err_release_region;
	}

	ret = misc_register(&debugcon_misc);
	if (ret) {
		pr_err("cannot register /dev/%s: %d\n", DEBUGCON_NAME, ret);
		goto err_release_region;
	}

	pr_info("/dev/%s on port 0x%x\n", DEBUGCON_NAME, COSIM_DEBUGCON_PORT);
	return 0;

err_release_region:
	release_region(COSIM_DEBUGCON_PORT, 1);
	return ret;
}
module_init(debugcon_init);

static void __exit debugcon_exit(void)
{
	misc_deregister(&debugcon_misc);
	release_region(COSIM_DEBUGCON_PORT, 1);
}
module_exit(debugcon_exit);

MODULE_DESCRIPTION("/dev/debugcon: QEMU debug console (I/O port 0xe9)");
MODULE_LICENSE("GPL");
