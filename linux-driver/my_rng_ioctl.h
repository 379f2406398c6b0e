/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * The user ABI of /dev/my_rng_driver, shared by the driver and
 * the user programs.
 *
 * The ABI is the one of the virtualisation tutorial the device comes from,
 * kept bit for bit so its unchanged user programs work:
 *   RAND = _IOR('q', 1, unsigned int) = 0x80047101: the driver stores the next
 *          32-bit number of the generator at the user pointer.
 *   SEED = _IOW('q', 1, unsigned int) = 0x40047101: the driver reads an
 *          unsigned int from the user pointer and seeds the generator with it.
 * Both commands share number 1: they differ only in their direction bits.
 */
#ifndef MY_RNG_IOCTL_H
#define MY_RNG_IOCTL_H

#include <linux/ioctl.h>

#define MY_RNG_DEVICE_NAME	"my_rng_driver"

#define MY_RNG_IOCTL_MAGIC	'q'
#define MY_RNG_IOCTL_RAND	_IOR(MY_RNG_IOCTL_MAGIC, 1, unsigned int)
#define MY_RNG_IOCTL_SEED	_IOW(MY_RNG_IOCTL_MAGIC, 1, unsigned int)

#endif /* MY_RNG_IOCTL_H */
