// SPDX-License-Identifier: GPL-2.0
/*
 * misuse - drives the two drivers the wrong way and checks each error.
 *
 * usage: misuse [rng] [debugcon]      (no argument: both groups)
 *
 * One line per check: "CHECK <name> PASS|FAIL <details>".  Exits 1 if any
 * check failed, 2 on bad usage.  Nothing is ever written to the debug
 * console (the sign-off compares its capture byte for byte).
 *
 * rng group (/dev/my_rng_driver):
 *   RAND and SEED with a NULL, an unmapped and a kernel pointer -> EFAULT;
 *   unknown commands (other number, same number with another size) -> ENOTTY;
 *   several processes hammering SEED/RAND at once -> no error, and every
 *   number is one glibc's rand() can return (0..RAND_MAX, so never the
 *   all-ones of an unanswered read).
 * debugcon group (/dev/debugcon):
 *   a second open while the first is held -> EBUSY; open after close works;
 *   write from an unmapped buffer -> EFAULT, nothing sent.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "my_rng_ioctl.h"

#define RNG_PATH	"/dev/" MY_RNG_DEVICE_NAME
#define DEBUGCON_PATH	"/dev/debugcon"
#define GLIBC_RAND_MAX	0x7fffffffu

#define HAMMER_PROCS	4
#define HAMMER_ROUNDS	25
#define HAMMER_READS	4

/* Child exit codes of the hammer test. */
#define HAMMER_OK	0
#define HAMMER_IOCTL	10
#define HAMMER_RANGE	11
#define HAMMER_STUCK	12

static int failures;

static void report(const char *name, int pass, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void report(const char *name, int pass, const char *fmt, ...)
{
	va_list ap;

	printf("CHECK %s %s ", name, pass ? "PASS" : "FAIL");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	if (!pass)
		failures++;
}

/* Runs ioctl and reports whether it failed with exactly `want`. */
static void check_ioctl_errno(const char *name, int fd, unsigned long cmd,
			      void *arg, int want)
{
	int ret = ioctl(fd, cmd, arg);
	int err = errno;

	if (ret == 0)
		report(name, 0, "ioctl 0x%lx succeeded, expected %s", cmd,
		       strerror(want));
	else
		report(name, err == want, "ioctl 0x%lx: got %s, expected %s",
		       cmd, strerror(err), strerror(want));
}

/* An address that is mapped nowhere in this process. */
static void *unmapped_address(void)
{
	long page = sysconf(_SC_PAGESIZE);
	void *p = mmap(NULL, page, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	munmap(p, page);
	return p;
}

static int hammer_child(int index)
{
	unsigned int first = 0, value, seed;
	int fd, round, i, distinct = 0;

	fd = open(RNG_PATH, O_RDWR);
	if (fd < 0)
		return HAMMER_IOCTL;
	for (round = 0; round < HAMMER_ROUNDS; round++) {
		seed = (unsigned int)(index * 1000 + round);
		if (ioctl(fd, MY_RNG_IOCTL_SEED, &seed) < 0)
			return HAMMER_IOCTL;
		for (i = 0; i < HAMMER_READS; i++) {
			if (ioctl(fd, MY_RNG_IOCTL_RAND, &value) < 0)
				return HAMMER_IOCTL;
			if (value > GLIBC_RAND_MAX)
				return HAMMER_RANGE;
			if (round == 0 && i == 0)
				first = value;
			else if (value != first)
				distinct = 1;
		}
	}
	close(fd);
	return distinct ? HAMMER_OK : HAMMER_STUCK;
}

static void check_hammer(void)
{
	static const char * const why[] = {
		[HAMMER_IOCTL] = "open/ioctl error",
		[HAMMER_RANGE] = "number above RAND_MAX",
		[HAMMER_STUCK] = "always the same number",
	};
	pid_t pids[HAMMER_PROCS];
	int i, status, bad = 0;
	char details[256] = "";
	size_t len = 0;

	for (i = 0; i < HAMMER_PROCS; i++) {
		pids[i] = fork();
		if (pids[i] < 0) {
			report("rng_concurrent", 0, "fork: %s",
			       strerror(errno));
			while (--i >= 0)
				waitpid(pids[i], &status, 0);
			return;
		}
		if (pids[i] == 0)
			_exit(hammer_child(i));
	}
	for (i = 0; i < HAMMER_PROCS; i++) {
		int code;

		if (waitpid(pids[i], &status, 0) < 0) {
			bad++;
			continue;
		}
		code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
		if (code == HAMMER_OK)
			continue;
		bad++;
		len += snprintf(details + len, sizeof(details) - len,
				"child %d: %s; ", i,
				code >= HAMMER_IOCTL && code <= HAMMER_STUCK ?
				why[code] : "crashed");
		if (len >= sizeof(details))
			len = sizeof(details) - 1;
	}
	report("rng_concurrent", bad == 0, "%d processes x %d x (SEED + %d RAND): %s",
	       HAMMER_PROCS, HAMMER_ROUNDS, HAMMER_READS,
	       bad ? details : "all numbers valid");
}

static void check_rng(void)
{
	/* Inside the kernel half: access_ok() must reject it. */
	void *kernel_ptr = (void *)(uintptr_t)0xffff888000000000ull;
	void *unmapped = unmapped_address();
	int fd;

	fd = open(RNG_PATH, O_RDWR);
	if (fd < 0) {
		report("rng_open", 0, "%s: %s", RNG_PATH, strerror(errno));
		return;
	}
	report("rng_open", 1, "%s", RNG_PATH);

	check_ioctl_errno("rng_rand_null", fd, MY_RNG_IOCTL_RAND, NULL,
			  EFAULT);
	check_ioctl_errno("rng_rand_unmapped", fd, MY_RNG_IOCTL_RAND,
			  unmapped, EFAULT);
	check_ioctl_errno("rng_rand_kernel_ptr", fd, MY_RNG_IOCTL_RAND,
			  kernel_ptr, EFAULT);
	check_ioctl_errno("rng_seed_null", fd, MY_RNG_IOCTL_SEED, NULL,
			  EFAULT);
	check_ioctl_errno("rng_seed_unmapped", fd, MY_RNG_IOCTL_SEED,
			  unmapped, EFAULT);
	check_ioctl_errno("rng_seed_kernel_ptr", fd, MY_RNG_IOCTL_SEED,
			  kernel_ptr, EFAULT);
	check_ioctl_errno("rng_unknown_nr", fd, _IOR('q', 2, unsigned int),
			  &(unsigned int){0}, ENOTTY);
	check_ioctl_errno("rng_unknown_size", fd,
			  _IOR('q', 1, unsigned long long),
			  &(unsigned long long){0}, ENOTTY);
	check_ioctl_errno("rng_unknown_none", fd, _IO('q', 1), NULL, ENOTTY);
	close(fd);

	check_hammer();
}

static void check_debugcon(void)
{
	int first, second, again;
	ssize_t n;

	first = open(DEBUGCON_PATH, O_WRONLY);
	if (first < 0) {
		report("debugcon_open", 0, "%s: %s", DEBUGCON_PATH,
		       strerror(errno));
		return;
	}
	report("debugcon_open", 1, "%s", DEBUGCON_PATH);

	second = open(DEBUGCON_PATH, O_WRONLY);
	if (second >= 0) {
		report("debugcon_second_open", 0,
		       "second open succeeded, expected EBUSY");
		close(second);
	} else {
		report("debugcon_second_open", errno == EBUSY,
		       "got %s, expected EBUSY", strerror(errno));
	}

	/* An unmapped buffer: the compiler rejects a literal NULL here. */
	n = write(first, unmapped_address(), 4);
	if (n >= 0)
		report("debugcon_write_bad_ptr", 0,
		       "write returned %zd, expected EFAULT", n);
	else
		report("debugcon_write_bad_ptr", errno == EFAULT,
		       "got %s, expected EFAULT", strerror(errno));

	close(first);
	again = open(DEBUGCON_PATH, O_WRONLY);
	if (again < 0) {
		report("debugcon_reopen", 0, "open after close: %s",
		       strerror(errno));
		return;
	}
	report("debugcon_reopen", 1, "open after close succeeded");
	close(again);
}

int main(int argc, char **argv)
{
	int rng = argc < 2, debugcon = argc < 2;
	int i;

	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "rng")) {
			rng = 1;
		} else if (!strcmp(argv[i], "debugcon")) {
			debugcon = 1;
		} else {
			fprintf(stderr, "usage: misuse [rng] [debugcon]\n");
			return 2;
		}
	}
	if (rng)
		check_rng();
	if (debugcon)
		check_debugcon();
	printf("misuse: %d check(s) failed\n", failures);
	return failures ? 1 : 0;
}
