// SPDX-License-Identifier: GPL-2.0
/*
 * npd_test: provokes real kernel problems on demand, for npd's VM test (`cargo xtask
 * vm-test`). Never load it on a machine you care about.
 *
 * Files in /sys/kernel/debug/npd_test/ (write to trigger):
 *   warn        WARN(): a warning with a backtrace, taints W; the writer goes on.
 *   bug         BUG() in process context: a real oops, taints D; the writer dies (SIGSEGV)
 *               and the kernel goes on (unless panic_on_oops is set).
 *   hang        "N": the writer sleeps in TASK_UNINTERRUPTIBLE (D state) for N seconds or
 *               until `release` is written, so khungtaskd reports it as a hung task.
 *   release     wakes every writer blocked in `hang`.
 *   softlockup  "N": the writer spins for N seconds with preemption disabled, so the
 *               soft-lockup watchdog fires once N exceeds 2 * kernel.watchdog_thresh.
 */

#include <linux/debugfs.h>
#include <linux/delay.h>
#include <linux/fs.h>
#include <linux/jiffies.h>
#include <linux/kernel.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/preempt.h>
#include <linux/sched.h>
#include <linux/wait.h>

/* Upper bound for `hang` and `softlockup`, so a typo cannot wedge the VM for good. */
#define NPD_TEST_MAX_SECONDS 600

static struct dentry *npd_test_dir;
static DECLARE_WAIT_QUEUE_HEAD(npd_test_release_wq);
/* Bumped by every write to `release`; a hanging writer waits for it to change. */
static atomic_t npd_test_release_gen = ATOMIC_INIT(0);

static int npd_test_seconds(const char __user *buf, size_t len, unsigned int *seconds)
{
	int err = kstrtouint_from_user(buf, len, 10, seconds);

	if (err)
		return err;
	if (*seconds == 0 || *seconds > NPD_TEST_MAX_SECONDS)
		return -EINVAL;
	return 0;
}

static ssize_t npd_test_warn_write(struct file *file, const char __user *buf, size_t len,
				   loff_t *pos)
{
	WARN(1, "npd_test: WARN requested by %s[%d]\n", current->comm, task_pid_nr(current));
	return len;
}

static ssize_t npd_test_bug_write(struct file *file, const char __user *buf, size_t len,
				  loff_t *pos)
{
	pr_info("npd_test: BUG requested by %s[%d]\n", current->comm, task_pid_nr(current));
	BUG();
	return len; /* not reached */
}

static ssize_t npd_test_hang_write(struct file *file, const char __user *buf, size_t len,
				   loff_t *pos)
{
	unsigned int seconds;
	int start = atomic_read(&npd_test_release_gen);
	int err = npd_test_seconds(buf, len, &seconds);

	if (err)
		return err;
	pr_info("npd_test: %s[%d] blocks uninterruptibly for up to %us\n", current->comm,
		task_pid_nr(current), seconds);
	/* wait_event_timeout sleeps in TASK_UNINTERRUPTIBLE: exactly what khungtaskd checks. */
	wait_event_timeout(npd_test_release_wq, atomic_read(&npd_test_release_gen) != start,
			   seconds * HZ);
	pr_info("npd_test: %s[%d] unblocked\n", current->comm, task_pid_nr(current));
	return len;
}

static ssize_t npd_test_release_write(struct file *file, const char __user *buf, size_t len,
				      loff_t *pos)
{
	atomic_inc(&npd_test_release_gen);
	wake_up_all(&npd_test_release_wq);
	return len;
}

static ssize_t npd_test_softlockup_write(struct file *file, const char __user *buf, size_t len,
					 loff_t *pos)
{
	unsigned int seconds;
	ktime_t end;
	int err = npd_test_seconds(buf, len, &seconds);

	if (err)
		return err;
	pr_info("npd_test: %s[%d] spins for %us with preemption disabled\n", current->comm,
		task_pid_nr(current), seconds);
	/* Interrupts stay on, so the watchdog's timer runs and sees its thread starved. */
	end = ktime_add_ms(ktime_get(), seconds * 1000ULL);
	preempt_disable();
	while (ktime_before(ktime_get(), end))
		cpu_relax();
	preempt_enable();
	return len;
}

#define NPD_TEST_FOPS(name)                                        \
	static const struct file_operations npd_test_##name##_fops = { \
		.owner = THIS_MODULE,                                  \
		.write = npd_test_##name##_write,                      \
		.llseek = noop_llseek,                                 \
	}

NPD_TEST_FOPS(warn);
NPD_TEST_FOPS(bug);
NPD_TEST_FOPS(hang);
NPD_TEST_FOPS(release);
NPD_TEST_FOPS(softlockup);

static int __init npd_test_init(void)
{
	npd_test_dir = debugfs_create_dir("npd_test", NULL);
	if (IS_ERR(npd_test_dir))
		return PTR_ERR(npd_test_dir);
	debugfs_create_file("warn", 0200, npd_test_dir, NULL, &npd_test_warn_fops);
	debugfs_create_file("bug", 0200, npd_test_dir, NULL, &npd_test_bug_fops);
	debugfs_create_file("hang", 0200, npd_test_dir, NULL, &npd_test_hang_fops);
	debugfs_create_file("release", 0200, npd_test_dir, NULL, &npd_test_release_fops);
	debugfs_create_file("softlockup", 0200, npd_test_dir, NULL, &npd_test_softlockup_fops);
	return 0;
}

static void __exit npd_test_exit(void)
{
	debugfs_remove(npd_test_dir);
}

module_init(npd_test_init);
module_exit(npd_test_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Provokes oops, WARN, hung task and soft lockup for npd's VM test");
