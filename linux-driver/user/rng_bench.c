// SPDX-License-Identifier: GPL-2.0
/*
 * rng_bench - user-space throughput of the RNG driver (benchmark, not a test).
 *
 * usage: rng_bench IOCTLS HWRNG_BYTES
 * Times IOCTLS MY_RNG_IOCTL_RAND calls on /dev/my_rng_driver, then reads
 * HWRNG_BYTES bytes of /dev/hwrng in 4096-byte read(2)s, and prints
 *
 *   RNGBENCH ioctl n=<calls> ns=<elapsed>
 *   RNGBENCH hwrng bytes=<bytes> ns=<elapsed> sleeps=<voluntary switches>
 *
 * Elapsed times are CLOCK_MONOTONIC in the guest.  `sleeps` counts the times the
 * reader gave up the CPU during the hwrng reads (the hw_random core sleeps a jiffy
 * when a reschedule is due): a slow figure with few sleeps is the device path's
 * cost, not the guest scheduler's.  Exits non-zero on error.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "my_rng_ioctl.h"

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	const char *path = "/dev/" MY_RNG_DEVICE_NAME;
	static char buf[4096];
	unsigned long n, bytes, i, got = 0;
	unsigned int value;
	struct rusage ru0, ru1;
	long long t0, t1;
	ssize_t r;
	int fd;

	if (argc != 3) {
		fprintf(stderr, "usage: rng_bench IOCTLS HWRNG_BYTES\n");
		return 2;
	}
	n = strtoul(argv[1], NULL, 10);
	bytes = strtoul(argv[2], NULL, 10);

	fd = open(path, O_RDWR);
	if (fd < 0) {
		fprintf(stderr, "rng_bench: open %s: %s\n", path, strerror(errno));
		return 1;
	}
	t0 = now_ns();
	for (i = 0; i < n; i++) {
		if (ioctl(fd, MY_RNG_IOCTL_RAND, &value) < 0) {
			fprintf(stderr, "rng_bench: RAND: %s\n", strerror(errno));
			return 1;
		}
	}
	printf("RNGBENCH ioctl n=%lu ns=%lld\n", n, now_ns() - t0);
	close(fd);

	fd = open("/dev/hwrng", O_RDONLY);
	if (fd < 0) {
		fprintf(stderr, "rng_bench: open /dev/hwrng: %s\n", strerror(errno));
		return 1;
	}
	getrusage(RUSAGE_SELF, &ru0);
	t0 = now_ns();
	while (got < bytes) {
		r = read(fd, buf, bytes - got < sizeof(buf) ? bytes - got : sizeof(buf));
		if (r <= 0) {
			fprintf(stderr, "rng_bench: read /dev/hwrng: %s\n",
				r ? strerror(errno) : "end of file");
			return 1;
		}
		got += r;
	}
	t1 = now_ns();
	getrusage(RUSAGE_SELF, &ru1);
	printf("RNGBENCH hwrng bytes=%lu ns=%lld sleeps=%ld\n", got, t1 - t0,
	       ru1.ru_nvcsw - ru0.ru_nvcsw);
	close(fd);
	return 0;
}
