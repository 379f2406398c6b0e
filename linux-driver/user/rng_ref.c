// SPDX-License-Identifier: GPL-2.0
/*
 * rng_ref - the reference program of the RNG tutorial.
 *
 * Opens /dev/my_rng_driver and, twice, seeds the generator with 0 and reads
 * five numbers, printing "Round %d number %d: %u" for each.  Both rounds must
 * print the same numbers: glibc's srand(0); rand() x5 on the host.
 * Exits non-zero on any error.
 *
 * usage: rng_ref [pause_seconds]
 * The optional pause, between each SEED and the first RAND after it, is for
 * tests: it shows nothing else (e.g. the kernel's hwrng thread) takes numbers
 * from the sequence while the device is open.  Without it, the program is
 * the tutorial's.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "my_rng_ioctl.h"

#define ROUNDS	2
#define NUMBERS	5

int main(int argc, char **argv)
{
	const char *path = "/dev/" MY_RNG_DEVICE_NAME;
	unsigned int seed = 0;
	unsigned int pause = 0;
	unsigned int value;
	int fd, round, i;
	char *end;

	if (argc == 2) {
		pause = strtoul(argv[1], &end, 10);
		if (*argv[1] == '\0' || *end != '\0')
			argc = -1;
	}
	if (argc != 1 && argc != 2) {
		fprintf(stderr, "usage: rng_ref [pause_seconds]\n");
		return 2;
	}

	fd = open(path, O_RDWR);
	if (fd < 0) {
		fprintf(stderr, "rng_ref: open %s: %s\n", path, strerror(errno));
		return 1;
	}
	for (round = 0; round < ROUNDS; round++) {
		if (ioctl(fd, MY_RNG_IOCTL_SEED, &seed) < 0) {
			fprintf(stderr, "rng_ref: SEED %u: %s\n", seed,
				strerror(errno));
			return 1;
		}
		if (pause)
			sleep(pause);
		for (i = 0; i < NUMBERS; i++) {
			if (ioctl(fd, MY_RNG_IOCTL_RAND, &value) < 0) {
				fprintf(stderr, "rng_ref: RAND: %s\n",
					strerror(errno));
				return 1;
			}
			printf("Round %d number %d: %u\n", round, i, value);
		}
	}
	if (fflush(stdout) != 0 || close(fd) < 0) {
		fprintf(stderr, "rng_ref: %s\n", strerror(errno));
		return 1;
	}
	return 0;
}
