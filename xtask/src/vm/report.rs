//! Judges one VM run: what `npd-agent check` said and which events the agent printed,
//! against what each step of tests/vm/init.sh provoked; prints the results table.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{
    console::Console,
    scenarios::{Check, Kernel, SCENARIOS, Scenario, Via, normalize},
};

/// A `key=value` fact of a step's outcome (`exit=137 pid=122 cgroup=23`).
fn fact<'a>(outcome: &'a str, key: &str) -> Option<&'a str> {
    outcome
        .split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
        .filter(|value| !value.is_empty())
}

fn text(event: &Value, key: &str) -> String {
    match event.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// The entry of `detector` in `check --format json`'s `detectors`.
fn detector_entry<'a>(check: Option<&'a Value>, detector: &str) -> Option<&'a Value> {
    check?.get("detectors")?.as_array()?.iter().find(|d| {
        d.get("detector")
            .and_then(Value::as_str)
            .map(normalize)
            .as_deref()
            == Some(detector)
    })
}

fn active_hook<'a>(check: Option<&'a Value>, detector: &str) -> Option<&'a str> {
    detector_entry(check, detector)?
        .get("active")
        .and_then(Value::as_str)
}

fn attempts(entry: &Value) -> impl Iterator<Item = &Value> {
    entry
        .get("attempts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// How a detector attached, from `check`: `hook target, target` (the targets that hook
/// attached to), or `none attached`.
fn hook_description(check: Option<&Value>, detector: &str) -> Option<String> {
    let entry = detector_entry(check, detector)?;
    let Some(hook) = entry.get("active").and_then(Value::as_str) else {
        return Some("none attached".to_owned());
    };
    let targets: Vec<String> = attempts(entry)
        .filter(|a| a.get("error").is_none_or(Value::is_null))
        .filter(|a| a.get("hook").and_then(Value::as_str) == Some(hook))
        .map(|a| text(a, "target"))
        .collect();
    Some(format!("{hook} {}", targets.join(", ")).trim().to_owned())
}

/// Why each failed attempt of a detector failed (`hook target: error`), verifier log
/// included, for the report.
fn attempt_errors(check: Option<&Value>, detector: &str) -> Vec<String> {
    detector_entry(check, detector)
        .map(|entry| {
            attempts(entry)
                .filter(|a| a.get("error").is_some_and(|e| !e.is_null()))
                .map(|a| {
                    format!(
                        "{} {}: {}",
                        text(a, "hook"),
                        text(a, "target"),
                        text(a, "error")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A `check` item (`fentry`, `tp_btf`, ...): whether it is ok, and its detail.
fn check_item(check: Option<&Value>, name: &str) -> Option<(bool, String)> {
    let item = check?
        .get("items")?
        .as_array()?
        .iter()
        .find(|i| i.get("name").and_then(Value::as_str) == Some(name))?;
    Some((
        item.get("ok").and_then(Value::as_bool).unwrap_or(false),
        text(item, "detail"),
    ))
}

/// What the counters path of a detector is, from `check`'s notes.
fn counters_description(check: Option<&Value>, detector: &str) -> String {
    let Some(entry) = detector_entry(check, detector) else {
        return "not in check".to_owned();
    };
    let mentioned = entry.get("active").and_then(Value::as_str) == Some("counters")
        || entry
            .get("notes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .any(|note| note.contains("taint") || note.contains("_count"));
    if mentioned {
        "counters (taint mask, *_count)".to_owned()
    } else {
        "no counters in check".to_owned()
    }
}

/// One event, briefly, for the details column.
fn describe_event(event: &Value) -> String {
    let kind = text(event, "kind");
    if text(event, "source") == "counters" {
        return format!(
            "{kind} via counters ({}={}, taint {})",
            text(event, "counter"),
            text(event, "count"),
            text(event, "taint_flags")
        );
    }
    let task = format!(
        "{kind} {}/{} via {}",
        text(event, "pid"),
        text(event, "comm"),
        text(event, "source")
    );
    let extra = match kind.as_str() {
        "fd_exhausted" => format!(
            "{} {}, limit {}",
            text(event, "syscall"),
            text(event, "errno"),
            text(event, "nofile_limit")
        ),
        "oom_kill" => format!(
            "cgroup_id {}, scope {}, anon rss {} KiB",
            text(event, "cgroup_id"),
            text(event, "scope"),
            text(event, "anon_rss_kb")
        ),
        "hung_task" => format!(
            "stack {}",
            event
                .get("stack")
                .and_then(|s| s.get(0))
                .and_then(Value::as_str)
                .unwrap_or("empty")
        ),
        "hung_task_recovered" => format!(
            "{} after {} ms, {} reports",
            text(event, "how"),
            text(event, "hung_for_ms"),
            text(event, "reports")
        ),
        "memory_failure" => format!(
            "pfn {}, {}, recovery {}",
            text(event, "pfn"),
            text(event, "page_type"),
            text(event, "result")
        ),
        "machine_check" => format!(
            "{}, CPU {} bank {}, status {}",
            text(event, "severity"),
            text(event, "cpu"),
            text(event, "bank"),
            text(event, "status")
        ),
        "kernel_warning" | "kernel_oops" => format!(
            "caller {}, taint {}",
            text(event, "caller"),
            text(event, "taint_flags")
        ),
        _ => String::new(),
    };
    if extra.is_empty() {
        task
    } else {
        format!("{task} ({extra})")
    }
}

impl Check {
    /// Why `event` does not fit, if it does not.
    fn mismatch(self, event: &Value, outcome: &str) -> Option<String> {
        match self {
            Self::Caller(function) => {
                let caller = text(event, "caller");
                let fits = text(event, "source") != "fentry"
                    || caller
                        .strip_prefix(function)
                        .is_some_and(|rest| rest.starts_with('+'));
                (!fits).then(|| format!("caller {caller:?}, not in {function}"))
            }
            Self::StepCgroup => {
                let want = fact(outcome, "cgroup")?;
                let got = text(event, "cgroup_id");
                (got != want).then(|| format!("cgroup_id {got}, not the step's cgroup {want}"))
            }
            Self::Field(key, want) => {
                let got = text(event, key);
                (got != want).then(|| format!("{key} {got:?}, want {want:?}"))
            }
            Self::FirstSeen => (event.get("first_seen") != Some(&Value::Bool(true)))
                .then(|| "not a first report".to_owned()),
            Self::StackHas(function) => {
                let has = event
                    .get("stack")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .any(|frame| frame.split(['+', '.']).next() == Some(function));
                (!has).then(|| format!("no {function} frame in the stack"))
            }
            Self::CounterOrTaint(counter, letter) => {
                let got = text(event, "counter");
                let fits = got == counter
                    || (got == "tainted" && text(event, "taint_flags").contains(letter));
                (!fits).then(|| format!("counter {got:?}, want {counter} or taint {letter}"))
            }
        }
    }
}

impl Scenario {
    /// Events of this problem's kind from the right place (the provoking task, or the
    /// counters), fitting or not.
    fn candidates<'a>(&self, events: &'a [Value]) -> Vec<&'a Value> {
        events
            .iter()
            .filter(|e| text(e, "kind") == self.kind)
            .filter(|e| match self.via {
                Via::Hook => text(e, "comm") == self.comm,
                Via::Counters => text(e, "source") == "counters",
                Via::NoTask => text(e, "pid") == "0",
            })
            .collect()
    }

    /// Why a candidate event does not prove the problem was seen as expected.
    fn mismatches(&self, event: &Value, outcome: &str, hook: Option<&str>) -> Vec<String> {
        let mut why = Vec::new();
        match self.via {
            Via::Hook | Via::NoTask => {
                if let Some(pid) = fact(outcome, "pid")
                    && self.via == Via::Hook
                    && text(event, "pid") != pid
                {
                    why.push(format!("pid {}, not the step's {pid}", text(event, "pid")));
                }
                if let Some(hook) = hook
                    && text(event, "source") != hook
                {
                    why.push(format!("source {}, want {hook}", text(event, "source")));
                }
            }
            Via::Counters => {
                if event.get("since_boot") == Some(&Value::Bool(true)) {
                    why.push("counted before the agent started".to_owned());
                }
            }
        }
        why.extend(
            self.checks
                .iter()
                .filter_map(|check| check.mismatch(event, outcome)),
        );
        why
    }
}

/// One row of the results table.
#[derive(Debug)]
pub(super) struct Row {
    problem: &'static str,
    detector: &'static str,
    hook: String,
    provoked: String,
    seen: &'static str,
    details: String,
}

#[derive(Debug)]
pub(super) struct Report {
    check: Vec<String>,
    agent_log: Vec<String>,
    /// The log line of `npd-agent run --standalone` setting CperHardwareErrorFatal True.
    hardware_condition: Option<String>,
    counters: Option<String>,
    rows: Vec<Row>,
    pub(super) failures: Vec<String>,
}

impl Report {
    pub(super) fn new(kernel: &Kernel, detectors: &[String], console: &Console) -> Self {
        let mut failures = Vec::new();
        if console.timed_out {
            failures.push("the VM timed out before init.sh finished".to_owned());
        } else if !console.done {
            failures.push(
                "init.sh did not finish (the kernel panicked or init died; see serial.log)"
                    .to_owned(),
            );
        }
        if console.done {
            match console.agent_exit.as_deref() {
                Some("0") => {}
                Some("early") => failures.push("npd-agent event-dump exited by itself".to_owned()),
                Some(status) => failures.push(format!(
                    "npd-agent event-dump exited {status} on SIGTERM (a clean stop exits 0)"
                )),
                None => failures.push("init.sh printed no npd-agent event-dump exit".to_owned()),
            }
        }
        let check_json = console
            .blocks
            .get("check-json")
            .map(|lines| lines.join("\n"))
            .unwrap_or_default();
        let check: Option<Value> = serde_json::from_str(&check_json).ok();
        if check.is_none() {
            failures.push("`npd-agent check --format json` printed no report".to_owned());
        }
        let offered: BTreeSet<String> = detectors.iter().map(|d| normalize(d)).collect();
        if check.is_some() {
            failures.extend(hook_failures(kernel, &offered, check.as_ref()));
        }
        let mut unparsed = 0;
        let events: Vec<Value> = console
            .blocks
            .get("events")
            .into_iter()
            .flatten()
            .filter(|line| !line.trim().is_empty())
            .filter_map(|line| {
                let parsed = serde_json::from_str(line).ok();
                if parsed.is_none() {
                    unparsed += 1;
                }
                parsed
            })
            .collect();
        if unparsed > 0 {
            failures.push(format!("{unparsed} event lines were not JSON"));
        }
        let hardware_condition = fatal_hardware_condition(console);
        if offered.contains("hardware") && hardware_condition.is_none() {
            failures.push(
                "npd-agent run --standalone logged no CperHardwareErrorFatal True after the \
                 uncorrected machine check"
                    .to_owned(),
            );
        }
        let rows = SCENARIOS
            .iter()
            .map(|scenario| {
                let (row, failure) =
                    Row::judge(scenario, kernel, &offered, check.as_ref(), &events, console);
                failures.extend(failure);
                row
            })
            .collect();
        Self {
            check: console.blocks.get("check").cloned().unwrap_or_default(),
            counters: console.counters.clone(),
            agent_log: console.blocks.get("agent-log").cloned().unwrap_or_default(),
            hardware_condition,
            rows,
            failures,
        }
    }

    pub(super) fn print(&self) {
        println!("npd-agent check in the VM:");
        for line in &self.check {
            println!("  {line}");
        }
        println!("npd-agent event-dump log in the VM:");
        for line in &self.agent_log {
            println!("  {line}");
        }
        let header = Row {
            problem: "PROBLEM",
            detector: "DETECTOR",
            hook: "HOOK (check)".to_owned(),
            provoked: "PROVOKED".to_owned(),
            seen: "SEEN",
            details: "DETAILS".to_owned(),
        };
        let rows: Vec<&Row> = std::iter::once(&header).chain(&self.rows).collect();
        let width = |f: fn(&Row) -> usize| rows.iter().map(|r| f(r)).max().unwrap_or(0);
        let w = [
            width(|r| r.problem.len()),
            width(|r| r.detector.len()),
            width(|r| r.hook.len()),
            width(|r| r.provoked.len()),
            width(|r| r.seen.len()),
        ];
        println!();
        for row in rows {
            println!(
                "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {:<w4$}  {}",
                row.problem,
                row.detector,
                row.hook,
                row.provoked,
                row.seen,
                row.details,
                w0 = w[0],
                w1 = w[1],
                w2 = w[2],
                w3 = w[3],
                w4 = w[4],
            );
        }
        if let Some(counters) = &self.counters {
            println!("kernel counters after the steps: {counters}");
        }
        if let Some(line) = &self.hardware_condition {
            println!("npd-agent run --standalone during the hardware steps: {line}");
        }
    }
}

/// The line where the standalone agent of the hardware steps set CperHardwareErrorFatal.
fn fatal_hardware_condition(console: &Console) -> Option<String> {
    console
        .blocks
        .get("hardware-run-log")?
        .iter()
        .find(|line| {
            line.contains(r#"condition="CperHardwareErrorFatal""#)
                && line.contains(r#"status="True""#)
        })
        .map(|line| line.trim().to_owned())
}

/// The kernel's expected hooks against what `check` says attached (and, for fentry, that
/// `check` found fentry allowed at all).
fn hook_failures(
    kernel: &Kernel,
    offered: &BTreeSet<String>,
    check: Option<&Value>,
) -> Vec<String> {
    let mut failures = Vec::new();
    if kernel.expect.iter().any(|&(_, hook)| hook == "fentry") {
        match check_item(check, "fentry") {
            Some((true, _)) => {}
            Some((false, detail)) => {
                failures.push(format!("check: fentry is not allowed here ({detail})"));
            }
            None => failures.push("check reports nothing about fentry".to_owned()),
        }
    }
    for &(detector, hook) in kernel.expect {
        if !offered.contains(detector) {
            continue;
        }
        let active = active_hook(check, detector);
        if active != Some(hook) {
            let errors = attempt_errors(check, detector);
            failures.push(format!(
                "check: the {detector} detector's active hook is {}, want {hook}{}",
                active.unwrap_or("none"),
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(" (failed: {})", errors.join("; "))
                }
            ));
        }
    }
    failures
}

impl Row {
    /// The row of one scenario, and why it fails the run if it does.
    fn judge(
        scenario: &Scenario,
        kernel: &Kernel,
        offered: &BTreeSet<String>,
        check: Option<&Value>,
        events: &[Value],
        console: &Console,
    ) -> (Self, Option<String>) {
        let is_offered = offered.contains(scenario.detector);
        let expected_hook = kernel
            .expect
            .iter()
            .find(|&&(detector, _)| detector == scenario.detector)
            .map(|&(_, hook)| hook);
        let must_see = is_offered && expected_hook.is_some();
        let hook = if !is_offered {
            "-".to_owned()
        } else if scenario.via == Via::Counters {
            counters_description(check, scenario.detector)
        } else {
            hook_description(check, scenario.detector).unwrap_or_else(|| "not in check".to_owned())
        };

        let outcome = console
            .steps
            .get(scenario.step)
            .map(String::as_str)
            .unwrap_or_default();
        let exit = fact(outcome, "exit");
        let provoked_ok = exit == Some(scenario.exit.to_string().as_str());
        let provoked = match exit {
            _ if outcome.is_empty() => "not run".to_owned(),
            Some(code) if provoked_ok => format!("yes (exit={code})"),
            Some(code) => format!("NO (exit {code}, want {})", scenario.exit),
            None => outcome.to_owned(),
        };

        let candidates = scenario.candidates(events);
        let judged: Vec<(&Value, Vec<String>)> = candidates
            .iter()
            .map(|&e| (e, scenario.mismatches(e, outcome, expected_hook)))
            .collect();
        let matched: Vec<&Value> = judged
            .iter()
            .filter(|(_, why)| why.is_empty())
            .map(|&(e, _)| e)
            .collect();
        // The follow-up (a recovery) of the first matching report's task.
        let follow_up = scenario.then.map(|kind| {
            matched.first().and_then(|first| {
                events
                    .iter()
                    .find(|e| text(e, "kind") == kind && text(e, "pid") == text(first, "pid"))
            })
        });
        let seen_all = !matched.is_empty() && follow_up.is_none_or(|f| f.is_some());
        let seen = if seen_all {
            "yes"
        } else if must_see && provoked_ok {
            "NO"
        } else {
            "no"
        };

        let mut details = Vec::new();
        if let Some(first) = matched.first() {
            details.push(describe_event(first));
            if matched.len() > 1 {
                details.push(format!("{} such events", matched.len()));
            }
            match (scenario.then, follow_up.flatten()) {
                (Some(_), Some(follow)) => details.push(format!("then {}", describe_event(follow))),
                (Some(kind), None) => details.push(format!("no {kind} for that task")),
                (None, _) => {}
            }
        } else if !is_offered {
            details.push(format!("agent has no `{}` detector", scenario.detector));
        } else if let Some((nearest, why)) = judged.first() {
            details.push(format!(
                "nearest: {} - {}",
                describe_event(nearest),
                why.join(", ")
            ));
        } else {
            details.push(format!("no {} event", scenario.kind));
        }
        if expected_hook.is_none() && is_offered {
            details.push("not expected on this kernel".to_owned());
        }
        let others: BTreeSet<String> = events
            .iter()
            .filter(|e| !scenario.comm.is_empty() && text(e, "comm") == scenario.comm)
            .map(|e| text(e, "kind"))
            .filter(|kind| kind != scenario.kind && Some(kind.as_str()) != scenario.then)
            .collect();
        if !others.is_empty() {
            details.push(format!(
                "also from {}: {}",
                scenario.comm,
                others.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }

        let failure = if seen == "NO" {
            Some(format!(
                "{}: the {} detector should report it on this kernel and did not ({})",
                scenario.problem,
                scenario.detector,
                details.join("; ")
            ))
        } else if exit.is_some() && !provoked_ok {
            // A provocation that did not happen proves nothing either way: the test is broken.
            Some(format!(
                "{}: the provocation did not work ({provoked})",
                scenario.problem
            ))
        } else if must_see && console.done && !provoked_ok {
            Some(format!("{}: not provoked ({provoked})", scenario.problem))
        } else {
            None
        };
        let row = Self {
            problem: scenario.problem,
            detector: scenario.detector,
            hook,
            provoked,
            seen,
            details: details.join("; "),
        };
        (row, failure)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{super::scenarios::KERNELS, *};

    const CHECK: &str = r#"{"items":[{"name":"fentry","ok":true,"detail":"allowed"}],
        "detectors":[
        {"detector":"fd","active":"fexit","attempts":[{"hook":"fexit","target":"__x64_sys_* (42 syscalls)","error":null}],"notes":[]},
        {"detector":"hung_task","active":"tp_btf","attempts":[{"hook":"tp_btf","target":"sched_process_hang","error":null}],"notes":[]},
        {"detector":"oom","active":"tp_btf","attempts":[{"hook":"tp_btf","target":"mark_victim","error":null}],"notes":[]},
        {"detector":"oops","active":"fentry","attempts":[{"hook":"fentry","target":"oops_enter","error":null},{"hook":"fentry","target":"__warn","error":null}],"notes":["from /sys/kernel/{oops_count,warn_count} and the taint mask"]},
        {"detector":"hardware","active":"tracepoint","attempts":[{"hook":"tracepoint","target":"mce:mce_record, ras:memory_failure_event","error":null}],"notes":[]}]}"#;

    /// The console of a run where every step worked; step pids are 100 + index.
    fn console(check: &str, events: &[&str]) -> Console {
        let mut serial = vec!["npd-vm: init started on Linux 6.1.0-56-amd64".to_owned()];
        serial.push("===npd-vm:begin check-json===".to_owned());
        serial.push(check.replace('\n', " "));
        serial.push("===npd-vm:end check-json===".to_owned());
        for (i, scenario) in SCENARIOS.iter().enumerate() {
            let cgroup = if scenario.step == "oom" {
                " cgroup=23"
            } else {
                ""
            };
            serial.push(format!(
                "npd-vm: step {} exit={} pid={}{cgroup}",
                scenario.step,
                scenario.exit,
                100 + i
            ));
        }
        serial.push("npd-vm: npd-agent event-dump exit=0".to_owned());
        serial.push("===npd-vm:begin events===".to_owned());
        // A kernel message that slipped into a block is not part of it.
        serial.push("[   12.345678] npd_test: BUG requested".to_owned());
        serial.extend(events.iter().map(|e| (*e).to_owned()));
        serial.push("===npd-vm:end events===".to_owned());
        serial.push("===npd-vm:begin hardware-run-log===".to_owned());
        serial.push(
            "WARN npd_agent::agent: fatal machine check on CPU 0 bank 2 condition=\
             \"CperHardwareErrorFatal\" status=\"True\""
                .to_owned(),
        );
        serial.push("===npd-vm:end hardware-run-log===".to_owned());
        serial.push("npd-vm: done".to_owned());
        let mut console = Console::default();
        let mut block = None;
        for line in &serial {
            console.parse_line(line, Duration::ZERO, &mut block);
        }
        console
    }

    const FD: &str = r#"{"kind":"fd_exhausted","pid":100,"comm":"npd-fd","source":"fexit","errno":"EMFILE","syscall":"openat"}"#;
    const ALL_SEEN: &[&str] = &[
        FD,
        r#"{"kind":"oom_kill","pid":101,"comm":"npd-oom","source":"tp_btf","cgroup_id":23,"scope":"memcg"}"#,
        r#"{"kind":"hung_task","pid":102,"comm":"npd-hang","source":"tp_btf","first_seen":true,"stack":["npd_test_hang_write.cold+0x99"]}"#,
        r#"{"kind":"hung_task_recovered","pid":102,"comm":"npd-hang","source":"sweep","how":"exited"}"#,
        r#"{"kind":"hung_task","pid":103,"comm":"npd-frozen","source":"tp_btf","first_seen":true,"stack":[]}"#,
        r#"{"kind":"hung_task_recovered","pid":103,"comm":"npd-frozen","source":"sweep","how":"exited"}"#,
        r#"{"kind":"kernel_warning","pid":104,"comm":"npd-warn","source":"fentry","caller":"npd_test_warn_write+0x2b"}"#,
        r#"{"kind":"kernel_warning","pid":0,"comm":"","source":"counters","counter":"tainted","taint_flags":"WOEL","since_boot":false}"#,
        r#"{"kind":"memory_failure","pid":106,"comm":"npd-poison","source":"tracepoint","pfn":4660,"page_type":"dirty LRU page","result":"Recovered"}"#,
        r#"{"kind":"memory_failure","pid":107,"comm":"npd-hwpoison","source":"tracepoint","pfn":4661,"page_type":"dirty LRU page","result":"Recovered"}"#,
        r#"{"kind":"machine_check","pid":0,"comm":"","source":"tracepoint","severity":"corrected","cpu":0,"bank":1}"#,
        r#"{"kind":"machine_check","pid":0,"comm":"","source":"tracepoint","severity":"fatal","cpu":0,"bank":2}"#,
        r#"{"kind":"kernel_oops","pid":110,"comm":"npd-bug","source":"fentry","caller":"npd_test_bug_write+0x27"}"#,
    ];

    fn detectors(names: &[&str]) -> Vec<String> {
        names.iter().map(|&n| n.to_owned()).collect()
    }

    const EVERY: &[&str] = &["fd", "hung-task", "oom", "oops", "hardware"];

    #[test]
    fn facts_of_a_step() {
        assert_eq!(fact("exit=137 pid=122 cgroup=23", "cgroup"), Some("23"));
        assert_eq!(fact("exit=0", "pid"), None);
        assert_eq!(fact("skipped: no exit=", "exit"), None);
    }

    #[test]
    fn everything_seen_passes() {
        let report = Report::new(&KERNELS[0], &detectors(EVERY), &console(CHECK, ALL_SEEN));
        assert_eq!(report.failures, Vec::<String>::new());
        assert!(report.rows.iter().all(|row| row.seen == "yes"));
        assert_eq!(report.rows[4].hook, "fentry oops_enter, __warn");
        assert_eq!(report.rows[5].hook, "counters (taint mask, *_count)");
    }

    #[test]
    fn missing_detectors_are_shown_not_failed() {
        let report = Report::new(&KERNELS[0], &detectors(&["fd"]), &console(CHECK, &[FD]));
        assert_eq!(report.failures, Vec::<String>::new());
        assert_eq!(report.rows[0].seen, "yes");
        assert_eq!(report.rows[0].hook, "fexit __x64_sys_* (42 syscalls)");
        assert!(report.rows[1..].iter().all(|row| row.seen == "no"));
    }

    #[test]
    fn offered_detectors_must_see_their_problem() {
        let report = Report::new(&KERNELS[0], &detectors(EVERY), &console(CHECK, &[FD]));
        // oom, two hung tasks, WARN, soft lockup, two poisoned pages, two machine checks, oops.
        assert_eq!(report.failures.len(), 10, "{:?}", report.failures);
    }

    #[test]
    fn the_wrong_task_hook_or_cgroup_is_not_seen() {
        let mut events = ALL_SEEN.to_vec();
        // The OOM victim in another cgroup; the WARN from the counters, not fentry; a hung
        // task that never recovers.
        events[1] = r#"{"kind":"oom_kill","pid":101,"comm":"npd-oom","source":"tp_btf","cgroup_id":1,"scope":"memcg"}"#;
        events[6] = r#"{"kind":"kernel_warning","pid":104,"comm":"npd-warn","source":"counters","counter":"warn_count"}"#;
        events.remove(3);
        let report = Report::new(&KERNELS[0], &detectors(EVERY), &console(CHECK, &events));
        let seen: Vec<&str> = report.rows.iter().map(|row| row.seen).collect();
        assert_eq!(
            seen,
            [
                "yes", "NO", "NO", "yes", "NO", "yes", "yes", "yes", "yes", "yes", "yes"
            ]
        );
        assert!(
            report.rows[1]
                .details
                .contains("cgroup_id 1, not the step's cgroup 23"),
            "{}",
            report.rows[1].details
        );
        assert!(report.rows[2].details.contains("no hung_task_recovered"));
        assert_eq!(report.failures.len(), 3, "{:?}", report.failures);
    }

    #[test]
    fn a_refused_hook_fails_with_its_error() {
        let check = CHECK.replace(
            r#""active":"fentry","attempts":[{"hook":"fentry","target":"oops_enter","error":null}"#,
            r#""active":"counters","attempts":[{"hook":"fentry","target":"oops_enter","error":"EPERM"}"#,
        );
        let report = Report::new(&KERNELS[0], &detectors(EVERY), &console(&check, ALL_SEEN));
        assert!(
            report
                .failures
                .iter()
                .any(|f| f.contains("oops detector's active hook is counters")
                    && f.contains("fentry oops_enter: EPERM")),
            "{:?}",
            report.failures
        );
    }

    #[test]
    fn the_fatal_machine_check_must_set_its_condition() {
        let passing = Report::new(&KERNELS[0], &detectors(EVERY), &console(CHECK, ALL_SEEN));
        assert!(passing.hardware_condition.is_some());
        let mut console = console(CHECK, ALL_SEEN);
        console.blocks.insert(
            "hardware-run-log".to_owned(),
            vec![
                r#"INFO npd_agent::agent: condition="CperHardwareErrorFatal" status="False""#
                    .to_owned(),
            ],
        );
        let report = Report::new(&KERNELS[0], &detectors(EVERY), &console);
        assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
        assert!(report.failures[0].contains("CperHardwareErrorFatal"));
    }

    #[test]
    fn a_failed_provocation_fails_the_run() {
        let mut console = console(CHECK, &[FD]);
        console
            .steps
            .insert("oom".to_owned(), "exit=0 pid=101".to_owned());
        let report = Report::new(&KERNELS[0], &detectors(&["fd"]), &console);
        assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
        assert_eq!(report.rows[1].provoked, "NO (exit 0, want 137)");
    }
}
