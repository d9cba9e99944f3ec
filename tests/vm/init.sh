#!/bin/sh
# PID 1 of the VM that `cargo xtask vm-test` boots (busybox sh). It starts npd-agent as a node
# would run it (root), provokes one real kernel problem per step, then prints the agent's
# output between markers on the serial console for the host to parse, and powers off.
#
# Protocol with the host (xtask/src/vm/console.rs):
#   npd-vm: ...                      narration
#   npd-vm: step NAME exit=N pid=P [cgroup=I]
#                                    a step ran: its provoking process P exited N (and ran
#                                    in the cgroup whose directory has inode I)
#   npd-vm: step NAME skipped: WHY   a step could not run here
#   ===npd-vm:begin NAME=== ... ===npd-vm:end NAME===   a block of output (check, events, ...)
#   npd-vm: done                     everything was printed
#
#   npd-vm: hook cost MODE getppid=NS openat=NS dup=NS
#                                    ns per iteration of each loop (HOOK_COST=1)
#
# /etc/npd-vm.conf (written by the host) sets DETECTORS, FS_MODULES, HW_MODULES, DMESG and
# HOOK_COST.

/bin/busybox mkdir -p /proc /sys /dev /tmp /run /mnt
/bin/busybox --install -s
export PATH=/usr/bin:/usr/sbin:/bin:/sbin
# Plain log lines in the agent log the host prints.
export NO_COLOR=1

say() { echo "npd-vm: $*"; }
begin() { echo "===npd-vm:begin $1==="; }
end() { echo "===npd-vm:end $1==="; }
step_done() {
	line="step $1 exit=$2"
	shift 2
	[ $# -gt 0 ] && line="$line $*"
	say "$line"
}
step_skip() { say "step $1 skipped: $2"; }

# Ends the VM whatever happens: PID 1 exiting would panic the kernel instead.
finish() {
	say "done"
	sync
	poweroff -f
	sleep 5
}
trap finish EXIT

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing
mount -t cgroup2 cgroup2 /sys/fs/cgroup
. /etc/npd-vm.conf

say "init started on Linux $(uname -r), $(grep -c ^processor /proc/cpuinfo) CPUs, uptime $(cut -d' ' -f1 /proc/uptime)s"

DBG=/sys/kernel/debug/npd_test
insmod /lib/modules/npd/npd_test.ko || say "insmod npd_test.ko failed"
for module in $FS_MODULES $HW_MODULES; do
	insmod "/lib/modules/npd/$module.ko" || say "insmod $module.ko failed"
done

# khungtaskd reports a task blocked for this long; 120 s by default. Writing it wakes
# khungtaskd, so the shorter interval applies at once.
echo 2 >/proc/sys/kernel/hung_task_timeout_secs

# Run as a node would: root, straight from the binary (no wrapper, so $! is the agent).
AGENT_BIN=/usr/bin/npd-agent

begin check
$AGENT_BIN check --detectors "$DETECTORS" 2>&1
say "check exit=$?"
end check
begin check-json
$AGENT_BIN check --format json --detectors "$DETECTORS" 2>/dev/null
end check-json

# Waits until the agent logging to /tmp/agent.log has logged the hook of a detector (it does so
# after attaching them all); sets $waited.
wait_attached() {
	waited=0
	until grep -qE ': (tracepoint|tp_btf|fentry|fexit|counters|kprobe)|no hook could attach' /tmp/agent.log; do
		if ! kill -0 "$1" 2>/dev/null; then
			say "npd-agent event-dump exited early"
			break
		fi
		if [ "$waited" -ge 120 ]; then
			say "npd-agent event-dump is not ready after ${waited}s; going on"
			break
		fi
		sleep 1
		waited=$((waited + 1))
	done
	sleep 1
}

# Hook cost (HOOK_COST=1): ns per iteration of fd syscall loops and of getppid, which npd does
# not watch, with no agent, with the fd detector on fexit, and on its tracepoint fallback.
hook_cost_round() {
	line="$1"
	for loop in getppid openat dup; do
		line="$line $loop=$(npd-provoke loop $loop 100000)"
	done
	say "hook cost $line"
}
hook_cost_agent() {
	$AGENT_BIN event-dump --format json --detectors fd "$@" >/dev/null 2>/tmp/agent.log &
	cost_agent=$!
	wait_attached $cost_agent
}
if [ "$HOOK_COST" = 1 ]; then
	for round in 1 2 3; do
		hook_cost_round off
		hook_cost_agent
		hook_cost_round fexit
		kill -TERM $cost_agent
		wait $cost_agent
		hook_cost_agent --fallback-hooks-only
		hook_cost_round tracepoint
		kill -TERM $cost_agent
		wait $cost_agent
	done
fi

say "starting npd-agent event-dump --detectors $DETECTORS"
$AGENT_BIN event-dump --format json --detectors "$DETECTORS" >/tmp/events.jsonl 2>/tmp/agent.log &
AGENT=$!
wait_attached $AGENT
say "agent ready after ${waited}s; tests start"

# Each step runs its provoking process in the background and waits for it, to know its pid.

# fd exhaustion: a process with RLIMIT_NOFILE 64 opens files until EMFILE.
npd-provoke fd 64 &
pid=$!
wait $pid
step_done fd $? pid=$pid

# OOM kill in a cgroup v2 memory cgroup limited to 32 MiB.
CG=/sys/fs/cgroup/npd-oom
if echo +memory >/sys/fs/cgroup/cgroup.subtree_control && mkdir -p $CG &&
	echo $((32 * 1024 * 1024)) >$CG/memory.max; then
	echo 0 >$CG/memory.swap.max 2>/dev/null
	npd-provoke oom $CG &
	pid=$!
	wait $pid
	status=$?
	# The cgroup id the kernel reports is the inode of the cgroup's directory.
	step_done oom $status pid=$pid cgroup="$(stat -c %i $CG)"
else
	step_skip oom "cannot set up a cgroup v2 memory cgroup"
fi

# Hung task via the module: the writer sleeps in D state until released after 8 s.
if [ -e $DBG/hang ]; then
	npd-provoke write npd-hang $DBG/hang 60 &
	pid=$!
	sleep 8
	echo 1 >$DBG/release
	wait $pid
	step_done hang_module $? pid=$pid
else
	step_skip hang_module "npd_test module not loaded"
fi

# Hung task via fsfreeze: a write to a frozen ext4 blocks in sb_start_write (D state).
if [ -f /frozen.img ] && mkdir -p /mnt/frozen && mount -t ext4 -o loop /frozen.img /mnt/frozen; then
	if npd-provoke freeze /mnt/frozen; then
		npd-provoke write npd-frozen /mnt/frozen/blocked x &
		pid=$!
		sleep 8
		npd-provoke thaw /mnt/frozen
		wait $pid
		step_done hang_fsfreeze $? pid=$pid
	else
		step_skip hang_fsfreeze "FIFREEZE failed"
	fi
	umount /mnt/frozen
else
	step_skip hang_fsfreeze "no ext4 image, or loop/ext4 cannot mount it"
fi

if [ -e $DBG/warn ]; then
	npd-provoke write npd-warn $DBG/warn 1 &
	pid=$!
	wait $pid
	step_done warn $? pid=$pid
	say "tainted $(cat /proc/sys/kernel/tainted)"
else
	step_skip warn "npd_test module not loaded"
fi

# Soft lockup: spin 6 s with preemption off; watchdog_thresh 1 makes the threshold 2 s.
if [ -e $DBG/softlockup ] && [ -w /proc/sys/kernel/watchdog_thresh ]; then
	thresh=$(cat /proc/sys/kernel/watchdog_thresh)
	echo 1 >/proc/sys/kernel/watchdog_thresh
	npd-provoke write npd-softlockup $DBG/softlockup 6 &
	pid=$!
	wait $pid
	step_done softlockup $? pid=$pid
	echo "$thresh" >/proc/sys/kernel/watchdog_thresh
else
	step_skip softlockup "no npd_test module or no soft-lockup watchdog"
fi

# The hardware steps run under `npd-agent run --standalone --detectors hardware` too, which logs
# the conditions it sets: the uncorrected machine check must set CperHardwareErrorFatal.
$AGENT_BIN run --standalone --detectors hardware --listen 127.0.0.1:20258 >/tmp/run.log 2>&1 &
RUN=$!
waited=0
until grep -q "npd is running" /tmp/run.log || [ "$waited" -ge 60 ]; do
	sleep 1
	waited=$((waited + 1))
done

# A poisoned page: the helper poisons a page of its own with madvise(MADV_HWPOISON) (the
# kernel's memory_failure(), as for a real uncorrected memory error) and reads it again: SIGBUS.
npd-provoke poison &
pid=$!
wait $pid
step_done poison $? pid=$pid

# The same through hwpoison-inject: the helper writes the pfn of a page of its own to
# corrupt-pfn (memory_failure() on that pfn, as the machine-check handler calls it), then reads
# the page: SIGBUS.
HWPOISON=/sys/kernel/debug/hwpoison/corrupt-pfn
if [ -w $HWPOISON ]; then
	npd-provoke hwpoison $HWPOISON &
	pid=$!
	wait $pid
	step_done hwpoison $? pid=$pid
else
	step_skip hwpoison "no hwpoison-inject here"
fi

# Machine checks through mce-inject's software injection: the record takes the path of a logged
# machine check (mce_log, the decoder chain, mce:mce_record) but no #MC exception is raised,
# so the guest survives even an uncorrected one with processor context corrupt. A hardware
# injection (flags hw) of that one would panic it.
MCE=/sys/kernel/debug/mce-inject
# inject_mce STEP BANK STATUS: a write to `bank` injects; the module then resets the rest.
inject_mce() {
	echo sw >$MCE/flags && echo 0 >$MCE/cpu && echo "$3" >$MCE/status && echo "$2" >$MCE/bank
	step_done "$1" $?
}
if [ -w $MCE/bank ]; then
	# The kernel prints each machine check on the console, from a workqueue: keep it from
	# cutting into the step lines (dmesg still has them).
	printk=$(cut -f1 /proc/sys/kernel/printk)
	echo 1 >/proc/sys/kernel/printk
	# Corrected: VAL and EN, a memory read error's code (0x9f).
	inject_mce mce_corrected 1 0x900000000000009f
	# Uncorrected, processor context corrupt: VAL, UC, EN, PCC.
	inject_mce mce_fatal 2 0xb20000000000009f
	sleep 2
	echo "$printk" >/proc/sys/kernel/printk
else
	step_skip mce_corrected "no mce-inject here"
	step_skip mce_fatal "no mce-inject here"
fi
kill -TERM "$RUN" 2>/dev/null
wait "$RUN"

# Oops last: BUG() kills the writer (SIGSEGV, exit 139); the kernel goes on.
if [ -e $DBG/bug ]; then
	npd-provoke write npd-bug $DBG/bug 1 &
	pid=$!
	wait $pid
	step_done oops $? pid=$pid
	say "tainted $(cat /proc/sys/kernel/tainted)"
else
	step_skip oops "npd_test module not loaded"
fi

# Let the agent drain its ring buffer and poll its counters once more.
sleep 5
# The kernel's own account, to compare with the agent's (oops_count/warn_count: 6.2, and
# backported to Debian's 6.1).
counters="tainted=$(cat /proc/sys/kernel/tainted)"
for counter in oops_count warn_count softlockup_count; do
	[ -r /sys/kernel/$counter ] && counters="$counters $counter=$(cat /sys/kernel/$counter)"
done
say "kernel counters: $counters"
say "tests done; stopping npd-agent"
kill -TERM "$AGENT" 2>/dev/null
wait "$AGENT"
say "npd-agent event-dump exit=$?"

# Keep kernel messages from cutting into the blocks below.
echo 1 >/proc/sys/kernel/printk
begin events
cat /tmp/events.jsonl
end events
begin agent-log
cat /tmp/agent.log
end agent-log
begin hardware-run-log
cat /tmp/run.log
end hardware-run-log
if [ "$DMESG" = 1 ]; then
	begin dmesg
	dmesg
	end dmesg
fi
