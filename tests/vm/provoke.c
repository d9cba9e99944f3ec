// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * npd-provoke: the VM test's helper for what busybox cannot do. Built with `gcc -static` by
 * `cargo xtask vm-test` and run by tests/vm/init.sh inside the VM.
 *
 *   npd-provoke fd LIMIT             lower RLIMIT_NOFILE to LIMIT, open files until EMFILE
 *   npd-provoke oom CGROUP           join the cgroup v2 CGROUP, allocate until OOM-killed
 *   npd-provoke write COMM FILE DATA write DATA to FILE as a task named COMM
 *   npd-provoke freeze|thaw MOUNT    FIFREEZE / FITHAW the filesystem mounted at MOUNT
 *   npd-provoke loop NAME COUNT      time COUNT getppid / open+close / dup+close calls: ns each
 *   npd-provoke poison               madvise(MADV_HWPOISON) a page of its own, then read it
 *   npd-provoke hwpoison FILE        write the pfn of a page of its own to hwpoison-inject's
 *                                    FILE (corrupt-pfn), then read the page
 *
 * Each problem runs under its own task name (comm), so the host can tell which step an
 * agent event belongs to.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

static int fail(const char *what)
{
	fprintf(stderr, "npd-provoke: %s: %s\n", what, strerror(errno));
	return 1;
}

static void name_task(const char *comm)
{
	prctl(PR_SET_NAME, comm, 0, 0, 0);
}

static int fd_exhaust(const char *limit_text)
{
	struct rlimit limit = { .rlim_cur = strtoul(limit_text, NULL, 10) };
	int opened = 0;

	name_task("npd-fd");
	limit.rlim_max = limit.rlim_cur;
	if (setrlimit(RLIMIT_NOFILE, &limit) != 0)
		return fail("setrlimit");
	for (;;) {
		if (open("/dev/null", O_RDONLY) < 0)
			break;
		opened++;
	}
	if (errno != EMFILE)
		return fail("open");
	printf("npd-provoke: fd: EMFILE after %d opens (limit %s)\n", opened, limit_text);
	return 0;
}

static int oom(const char *cgroup)
{
	char path[4096];
	size_t total = 0;
	int fd;

	name_task("npd-oom");
	snprintf(path, sizeof(path), "%s/cgroup.procs", cgroup);
	fd = open(path, O_WRONLY);
	/* "0" moves the writer itself. */
	if (fd < 0 || write(fd, "0", 1) != 1)
		return fail(path);
	close(fd);
	for (;;) {
		size_t chunk = 1 << 20;
		char *p = malloc(chunk);

		if (!p)
			return fail("malloc");
		/* Touch every page: untouched memory is not charged to the cgroup. */
		memset(p, 0x5a, chunk);
		total += chunk;
		if (total % (16 << 20) == 0)
			printf("npd-provoke: oom: %zu MiB allocated\n", total >> 20);
		fflush(stdout);
	}
}

static int write_as(const char *comm, const char *file, const char *data)
{
	int fd;
	ssize_t n;

	name_task(comm);
	fd = open(file, O_WRONLY | O_CREAT, 0644);
	if (fd < 0)
		return fail(file);
	n = write(fd, data, strlen(data));
	if (n < 0)
		return fail(file);
	close(fd);
	return 0;
}

static int freeze(const char *mount, unsigned long request)
{
	int fd = open(mount, O_RDONLY | O_DIRECTORY);

	if (fd < 0 || ioctl(fd, request, 0) != 0)
		return fail(mount);
	close(fd);
	return 0;
}

/*
 * Poisons one of its own pages as a hardware memory error would (memory_failure() on the
 * page, run in this task: needs CAP_SYS_ADMIN and CONFIG_MEMORY_FAILURE), then reads it: the
 * kernel unmapped the page, so the read ends the process with SIGBUS (exit 135).
 */
static int poison(void)
{
	long page_size = sysconf(_SC_PAGESIZE);
	volatile char *page;

	name_task("npd-poison");
	page = mmap(NULL, page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (page == MAP_FAILED)
		return fail("mmap");
	page[0] = 1;
	if (madvise((void *)page, page_size, MADV_HWPOISON) != 0)
		return fail("madvise(MADV_HWPOISON)");
	printf("npd-provoke: poison: page poisoned; reading it\n");
	return page[0] == 1 ? 0 : 3;
}

/* The page frame backing `address` in this process, from /proc/self/pagemap (root only). */
static unsigned long long own_pfn(const void *address)
{
	unsigned long long entry = 0;
	long page_size = sysconf(_SC_PAGESIZE);
	off_t at = (off_t)((unsigned long)address / page_size) * sizeof(entry);
	int fd = open("/proc/self/pagemap", O_RDONLY);

	if (fd < 0 || pread(fd, &entry, sizeof(entry), at) != sizeof(entry))
		entry = 0;
	if (fd >= 0)
		close(fd);
	/* Bit 63: present; bits 0-54: the pfn. */
	return (entry >> 63) ? entry & ((1ULL << 55) - 1) : 0;
}

/*
 * Poisons one of its own pages through hwpoison-inject (memory_failure() on a pfn, as the
 * machine-check handler would call it), then reads it: SIGBUS (exit 135).
 */
static int hwpoison(const char *corrupt_pfn)
{
	long page_size = sysconf(_SC_PAGESIZE);
	unsigned long long pfn;
	volatile char *page;
	char text[32];
	int fd, len;

	name_task("npd-hwpoison");
	page = mmap(NULL, page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (page == MAP_FAILED)
		return fail("mmap");
	page[0] = 1;
	pfn = own_pfn((const void *)page);
	if (!pfn) {
		errno = ENOENT;
		return fail("/proc/self/pagemap");
	}
	len = snprintf(text, sizeof(text), "%#llx", pfn);
	fd = open(corrupt_pfn, O_WRONLY);
	if (fd < 0 || write(fd, text, len) != len)
		return fail(corrupt_pfn);
	close(fd);
	printf("npd-provoke: hwpoison: pfn %s poisoned; reading it\n", text);
	return page[0] == 1 ? 0 : 3;
}

static void loop_getppid(void)
{
	syscall(SYS_getppid);
}

static void loop_openat(void)
{
	close(open("/dev/null", O_RDONLY));
}

static void loop_dup(void)
{
	close(dup(0));
}

/* Prints the ns per iteration of N calls of a syscall loop (CLOCK_MONOTONIC). */
static int syscall_loop(const char *name, const char *count_text)
{
	void (*body)(void) = !strcmp(name, "getppid") ? loop_getppid :
			     !strcmp(name, "openat")  ? loop_openat :
			     !strcmp(name, "dup")     ? loop_dup :
							NULL;
	long count = atol(count_text);
	struct timespec start, end;

	if (!body || count <= 0) {
		fprintf(stderr, "npd-provoke: loop getppid|openat|dup COUNT\n");
		return 2;
	}
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (long i = 0; i < count; i++)
		body();
	clock_gettime(CLOCK_MONOTONIC, &end);
	printf("%lld\n", ((end.tv_sec - start.tv_sec) * 1000000000LL + end.tv_nsec - start.tv_nsec) /
				 count);
	return 0;
}

int main(int argc, char **argv)
{
	const char *cmd = argc > 1 ? argv[1] : "";

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!strcmp(cmd, "fd") && argc == 3)
		return fd_exhaust(argv[2]);
	if (!strcmp(cmd, "oom") && argc == 3)
		return oom(argv[2]);
	if (!strcmp(cmd, "write") && argc == 5)
		return write_as(argv[2], argv[3], argv[4]);
	if (!strcmp(cmd, "freeze") && argc == 3)
		return freeze(argv[2], FIFREEZE);
	if (!strcmp(cmd, "thaw") && argc == 3)
		return freeze(argv[2], FITHAW);
	if (!strcmp(cmd, "loop") && argc == 4)
		return syscall_loop(argv[2], argv[3]);
	if (!strcmp(cmd, "poison") && argc == 2)
		return poison();
	if (!strcmp(cmd, "hwpoison") && argc == 3)
		return hwpoison(argv[2]);
	fprintf(stderr, "usage: npd-provoke fd LIMIT | oom CGROUP | write COMM FILE DATA | "
			"freeze MOUNT | thaw MOUNT | loop getppid|openat|dup COUNT | poison | "
			"hwpoison FILE\n");
	return 2;
}
