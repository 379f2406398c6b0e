// SPDX-License-Identifier: GPL-2.0
/*
 * rng_stress - one of N parallel RAND users of /dev/my_rng_driver
 * (bench/robustness/__main__.py, issue 6: N processes x M ioctls).
 *
 * usage: rng_stress seed VALUE      one SEED ioctl
 *        rng_stress TAG M           M RAND ioctls, one "TAG i value" line each
 *
 * The host checks that the union of all lines is exactly the next N*M numbers
 * of glibc's sequence (none lost, none twice) and that each process saw its
 * numbers in sequence order.  Exits 1 on any ioctl error, 2 on bad usage.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "my_rng_ioctl.h"

int main(int argc, char **argv)
{
	unsigned int value;
	long i, m;
	int fd;

	if (argc != 3)
		return 2;
	fd = open("/dev/" MY_RNG_DEVICE_NAME, O_RDWR);
	if (fd < 0) {
		perror("rng_stress: open");
		return 1;
	}
	if (!strcmp(argv[1], "seed")) {
		value = strtoul(argv[2], NULL, 0);
		if (ioctl(fd, MY_RNG_IOCTL_SEED, &value)) {
			perror("rng_stress: SEED");
			return 1;
		}
		return 0;
	}
	m = strtol(argv[2], NULL, 0);
	for (i = 0; i < m; i++) {
		if (ioctl(fd, MY_RNG_IOCTL_RAND, &value)) {
			perror("rng_stress: RAND");
			return 1;
		}
		printf("%s %ld %u\n", argv[1], i, value);
	}
	return 0;
}
