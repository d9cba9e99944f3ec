//! What the Events and conditions say: messages naming the pod, the unit or the process, and
//! the aggregation keys.

use super::*;

#[test]
fn messages_name_the_pod_the_unit_or_the_process() {
    // (attribution, KERNEL_DEADLOCK message, OOMKilling message, targets)
    let cases: Vec<(Option<Attribution>, &str, &str, usize)> = vec![
        (
            Some(named_pod()),
            "task mysqld (pid 100) in pod shop/db-0, container mysql blocked in D state since \
             2027-01-15T08:00:10.000Z; stack: percpu_rwsem_wait+0x11d/0x150, \
             __sb_start_write+0x56/0x70, ext4_buffered_write_iter+0x3a/0x160",
            "process mysqld (pid 100) in pod shop/db-0, container mysql killed by the OOM killer \
             (memory cgroup /kubepods/burstable/podX at its limit, rss 1002000 KiB)",
            2,
        ),
        (
            Some(uid_only_pod()),
            "task mysqld (pid 100) in pod uid 5f0c8f6e-2d4a-4d8e-9a51-3b8d1c2e7f10, container id \
             0123456789ab blocked in D state since 2027-01-15T08:00:10.000Z; stack: \
             percpu_rwsem_wait+0x11d/0x150, __sb_start_write+0x56/0x70, \
             ext4_buffered_write_iter+0x3a/0x160",
            "process mysqld (pid 100) in pod uid 5f0c8f6e-2d4a-4d8e-9a51-3b8d1c2e7f10, container \
             id 0123456789ab killed by the OOM killer (memory cgroup /kubepods/burstable/podX at \
             its limit, rss 1002000 KiB)",
            1,
        ),
        (
            Some(unit()),
            "task mysqld (pid 100) in unit containerd.service blocked in D state since \
             2027-01-15T08:00:10.000Z; stack: percpu_rwsem_wait+0x11d/0x150, \
             __sb_start_write+0x56/0x70, ext4_buffered_write_iter+0x3a/0x160",
            "process mysqld (pid 100) in unit containerd.service killed by the OOM killer \
             (memory cgroup /kubepods/burstable/podX at its limit, rss 1002000 KiB)",
            1,
        ),
        (
            None,
            "task mysqld (pid 100) blocked in D state since 2027-01-15T08:00:10.000Z; stack: \
             percpu_rwsem_wait+0x11d/0x150, __sb_start_write+0x56/0x70, \
             ext4_buffered_write_iter+0x3a/0x160",
            "process mysqld (pid 100) killed by the OOM killer (memory cgroup \
             /kubepods/burstable/podX at its limit, rss 1002000 KiB)",
            1,
        ),
    ];
    for (attribution, deadlock_message, oom_message, targets) in cases {
        let mut engine = engine_with(config());
        let hung_events = engine.observe(&hung(10, 100, 10, attribution.clone()), at(10));
        assert_eq!(engine.condition(KERNEL_DEADLOCK).message, deadlock_message);
        assert_eq!(hung_events.len(), 1);
        assert!(
            hung_events[0]
                .message
                .starts_with(&deadlock_message[..deadlock_message.find(" blocked").unwrap()]),
            "{}",
            hung_events[0].message
        );
        let oom_events = engine.observe(&oom(11, 100, attribution.clone()), at(11));
        assert_eq!(oom_events.len(), 1);
        let oom_event = &oom_events[0];
        assert_eq!(oom_event.message, oom_message);
        assert_eq!(oom_event.event_type, EventType::Warning);
        assert_eq!(oom_event.targets.len(), targets, "{oom_message}");
        assert_eq!(oom_event.targets[0], EventTarget::Node);
    }
}

#[test]
fn event_messages_of_every_kind() {
    let mut engine = engine_with(config());
    let mut trigger = oom(3, 100, None);
    if let Some(kill) = trigger.detail_as_mut::<OomKill>() {
        kill.trigger = task(555, "java");
        kill.scope = OomScope::Global;
    }
    let cases: Vec<(Event, EventReason, EventType, &str)> = vec![
        (
            hung(1, 100, 1, Some(named_pod())),
            TASK_HUNG,
            EventType::Warning,
            "task mysqld (pid 100) in pod shop/db-0, container mysql blocked in D state for more \
             than the hung task timeout; stack: percpu_rwsem_wait+0x11d/0x150, \
             __sb_start_write+0x56/0x70, ext4_buffered_write_iter+0x3a/0x160",
        ),
        (
            recovered(2, 100),
            TASK_HUNG_RECOVERED,
            EventType::Normal,
            "task mysqld (pid 100) no longer blocked (running) after 130.0s and 2 reports",
        ),
        (
            trigger,
            OOM_KILLING,
            EventType::Warning,
            "process mysqld (pid 100) killed by the OOM killer (system out of memory, rss \
             1002000 KiB); the allocation that ran it was by java (pid 555)",
        ),
        (
            oops(4, false),
            KERNEL_OOPS,
            EventType::Warning,
            "kernel oops at do_the_bug+0x15/0x20 [crasher] in task insmod (pid 4242); kernel \
             tainted D",
        ),
        (
            warning(5, "ext4_foo+0x1/0x2"),
            KERNEL_WARNING,
            EventType::Warning,
            "kernel warning at ext4_foo+0x1/0x2 in task kworker/0:1 (pid 17); kernel tainted W",
        ),
        (
            fd(6, 300, Errno::Emfile, 41, false),
            FD_EXHAUSTED,
            EventType::Warning,
            "process nginx (pid 300): out of file descriptors (RLIMIT_NOFILE 1024): openat failed \
             (+41 suppressed)",
        ),
    ];
    for (event, reason, event_type, message) in cases {
        let emitted = engine.observe(&event, at(10));
        assert_eq!(emitted.len(), 1, "{reason}");
        assert_eq!(
            (
                emitted[0].reason,
                emitted[0].event_type,
                emitted[0].message.as_str()
            ),
            (reason, event_type, message)
        );
    }
}

#[test]
fn aggregation_keys() {
    let mut engine = engine_with(config());
    let cases: Vec<(Event, String)> = vec![
        (
            oom(1, 100, Some(named_pod())),
            format!("OOMKilling|pod:{UID}/mysql|mysqld"),
        ),
        (
            oom(1, 100, Some(uid_only_pod())),
            format!("OOMKilling|pod:{UID}/{CONTAINER_ID}|mysqld"),
        ),
        (
            oom(1, 100, Some(unit())),
            "OOMKilling|unit:containerd.service|mysqld".to_owned(),
        ),
        (
            oom(1, 100, Some(bare_cgroup())),
            "OOMKilling|cgroup:/custom/batch|mysqld".to_owned(),
        ),
        (oom(1, 100, None), "OOMKilling|node|mysqld".to_owned()),
        (
            hung(1, 100, 1, None),
            "TaskHung|node|mysqld|percpu_rwsem_wait".to_owned(),
        ),
        (
            recovered(1, 100),
            "TaskHungRecovered|node|mysqld".to_owned(),
        ),
        (oops(1, false), "KernelOops|node|do_the_bug".to_owned()),
        (
            warning(1, "ext4_foo+0x1/0x2"),
            "KernelWarning|node|ext4_foo".to_owned(),
        ),
        (
            fd(1, 300, Errno::Emfile, 0, false),
            "FDExhausted|node|nginx|300|EMFILE".to_owned(),
        ),
    ];
    for (event, key) in cases {
        let emitted = engine.observe(&event, at(1));
        assert_eq!(emitted.len(), 1, "{key}");
        assert_eq!(emitted[0].aggregation_key, key);
    }
}
