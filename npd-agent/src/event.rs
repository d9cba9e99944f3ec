//! Decoded, enriched observations: what `event-dump` prints and the problem engine consumes.
//! One variant per kind; the kernel ABI stays in npd-common, this is the agent's own model.

use std::{any::Any, fmt::Debug, path::Path};

use serde::{Serialize, ser::SerializeMap};

use crate::{clock, problem::Assessment};

/// Where an event came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A classic tracepoint.
    Tracepoint,
    /// A BTF-typed raw tracepoint.
    #[serde(rename = "tp_btf")]
    BtfTracepoint,
    Fentry,
    Fexit,
    /// The kernel's own problem counters (oops_count, warn_count, taint), read by the agent.
    Counters,
    /// The agent's accounting of rate-limited kernel records (a storm's tail).
    Sweep,
    /// The agent read the kernel's state (a detector with no kernel programs).
    Sampled,
}

impl Source {
    pub fn from_hook(hook: npd_common::Hook) -> Self {
        match hook {
            npd_common::Hook::Tracepoint => Self::Tracepoint,
            npd_common::Hook::BtfTracepoint => Self::BtfTracepoint,
            npd_common::Hook::Fentry => Self::Fentry,
            npd_common::Hook::Fexit => Self::Fexit,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tracepoint => "tracepoint",
            Self::BtfTracepoint => "tp_btf",
            Self::Fentry => "fentry",
            Self::Fexit => "fexit",
            Self::Counters => "counters",
            Self::Sweep => "sweep",
            Self::Sampled => "sampled",
        }
    }
}

/// The task an event is about.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub cgroup_id: u64,
}

impl Task {
    pub fn from_header(header: &npd_common::RecordHeader) -> Self {
        Self {
            pid: header.pid,
            tid: header.tid,
            comm: comm_string(&header.comm),
            cgroup_id: header.cgroup_id,
        }
    }
}

/// Text a process or a pod controls (a process name, a cgroup or mount path), made safe to
/// put in a message or a log line: control characters, backslashes and non-UTF-8 bytes are
/// escaped (`\n`, `\x1b`, `\\`), and a name with spaces or quotes is quoted, so nothing
/// it contains can start a new line, colour a terminal or pass for another word.
pub fn escape_untrusted(text: &str) -> std::borrow::Cow<'_, str> {
    let plain = |c: char| !c.is_control() && c != '\\' && c != '"' && !c.is_whitespace();
    if text.chars().all(plain) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 2);
    let quote = text.chars().any(|c| c.is_whitespace() || c == '"');
    if quote {
        escaped.push('"');
    }
    for c in text.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            c if c.is_control() => escaped.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => escaped.push(c),
        }
    }
    if quote {
        escaped.push('"');
    }
    std::borrow::Cow::Owned(escaped)
}

pub fn comm_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// Who a problem belongs to, from its cgroup: a container of a pod, or a systemd unit.
/// Filled in by attribution; empty in records straight from the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Attribution {
    /// The cgroup's path below the hierarchy root, e.g. `/kubepods/burstable/pod<uid>/<id>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// The systemd unit of a process outside pods, e.g. `containerd.service`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PodRef {
    pub uid: String,
    /// From the API server; absent until the pod is known (or in standalone mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `guaranteed`, `burstable` or `besteffort`, from the cgroup path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<String>,
    /// The container runtime's id, from the cgroup path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The container's name, from the pod's status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// What one kind of event carries beyond the common fields, and what it means. Each
/// detector's agent file implements it for its kinds; `event-dump` prints [`Finding::fields`]
/// and the engine acts on [`Finding::assess`].
pub trait Finding: Debug + Send + Sync + 'static {
    /// The event kind, e.g. `oom_kill`.
    fn kind(&self) -> &'static str;
    /// One line for people (the table of `event-dump`, debug logs).
    fn summary(&self) -> String;
    /// The kind's own fields, flattened into the event's JSON.
    fn fields(&self) -> serde_json::Map<String, serde_json::Value>;
    /// What the event means to the problem engine. Pure: no IO.
    fn assess(&self, event: &Event) -> Assessment;
    /// The task's cgroup path as the kernel read it at the event, when the hook could: it
    /// attributes even a cgroup removed before the agent looked its id up.
    fn cgroup_path(&self) -> Option<&str> {
        None
    }
    /// Fills in what needs the event's attribution (e.g. the memory cgroup that hit its
    /// limit), reading below `cgroup_root`.
    fn attributed(&mut self, _attribution: Option<&Attribution>, _cgroup_root: &Path) {}
    /// Pods the problem affects besides the one its task runs in (e.g. the pods whose volumes
    /// are on a failing disk), by uid: their Events go to them too.
    fn affected_pod_uids(&self) -> Vec<String> {
        Vec::new()
    }
    fn clone_box(&self) -> Box<dyn Finding>;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// [`Finding::fields`] for a kind that derives `Serialize` as a struct.
pub fn fields_of<T: Serialize>(value: &T) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    }
}

/// The boilerplate of [`Finding`]: `kind`, `fields`, `clone_box`, `as_any`; the kind writes
/// `summary` and `assess` (and `attributed` if it needs one) in `{ ... }`.
#[macro_export]
macro_rules! finding {
    ($ty:ty, $kind:expr, { $($rest:tt)* }) => {
        impl $crate::event::Finding for $ty {
            fn kind(&self) -> &'static str {
                $kind
            }
            fn fields(&self) -> serde_json::Map<String, serde_json::Value> {
                $crate::event::fields_of(self)
            }
            fn clone_box(&self) -> Box<dyn $crate::event::Finding> {
                Box::new(self.clone())
            }
            fn as_any(&self) -> &dyn std::any::Any {
                self
            }
            fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
                self
            }
            $($rest)*
        }
    };
}

#[derive(Debug)]
pub struct Event {
    pub kind: &'static str,
    /// CLOCK_MONOTONIC nanoseconds when the kernel saw it.
    pub ts_ns: u64,
    /// Wall-clock time of `ts_ns`, RFC 3339.
    pub time: String,
    pub task: Task,
    pub source: Source,
    pub attribution: Option<Attribution>,
    /// Other pods the problem affects ([`Finding::affected_pod_uids`], named by attribution).
    pub affected_pods: Vec<PodRef>,
    pub detail: Box<dyn Finding>,
}

impl Clone for Event {
    fn clone(&self) -> Self {
        Self {
            kind: self.kind,
            ts_ns: self.ts_ns,
            time: self.time.clone(),
            task: self.task.clone(),
            source: self.source,
            attribution: self.attribution.clone(),
            affected_pods: self.affected_pods.clone(),
            detail: self.detail.clone_box(),
        }
    }
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = self.detail.fields();
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("kind", self.kind)?;
        map.serialize_entry("ts_ns", &self.ts_ns)?;
        map.serialize_entry("time", &self.time)?;
        map.serialize_entry("pid", &self.task.pid)?;
        map.serialize_entry("tid", &self.task.tid)?;
        map.serialize_entry("comm", &self.task.comm)?;
        map.serialize_entry("cgroup_id", &self.task.cgroup_id)?;
        map.serialize_entry("source", &self.source)?;
        if let Some(attribution) = &self.attribution {
            map.serialize_entry("attribution", attribution)?;
        }
        if !self.affected_pods.is_empty() {
            map.serialize_entry("affected_pods", &self.affected_pods)?;
        }
        for (key, value) in &fields {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl Event {
    pub fn new(ts_ns: u64, task: Task, source: Source, detail: impl Finding) -> Self {
        Self::boxed(ts_ns, task, source, Box::new(detail))
    }

    /// [`Event::new`] for a detail whose kind is known only at run time.
    pub fn boxed(ts_ns: u64, task: Task, source: Source, detail: Box<dyn Finding>) -> Self {
        Self {
            kind: detail.kind(),
            ts_ns,
            time: clock::rfc3339(clock::wall_time(ts_ns)),
            task,
            source,
            attribution: None,
            affected_pods: Vec::new(),
            detail,
        }
    }

    /// One line for people: the kind's own summary.
    pub fn summary(&self) -> String {
        self.detail.summary()
    }

    /// The detail as its concrete kind, if it is one.
    pub fn detail_as<T: Finding>(&self) -> Option<&T> {
        self.detail.as_any().downcast_ref()
    }

    pub fn detail_as_mut<T: Finding>(&mut self) -> Option<&mut T> {
        self.detail.as_any_mut().downcast_mut()
    }

    /// What the event means to the problem engine.
    pub fn assess(&self) -> Assessment {
        self.detail.assess(self)
    }
}

#[cfg(test)]
mod tests {
    use super::escape_untrusted;

    #[test]
    fn untrusted_text_cannot_break_a_line_or_pass_for_another_word() {
        let cases = [
            ("mysqld", "mysqld"),
            ("kworker/0:1", "kworker/0:1"),
            ("evil\nkubelet", "\"evil\\nkubelet\""),
            ("\x1b[31mred", "\\x1b[31mred"),
            ("a b", "\"a b\""),
            ("say \"hi\"", "\"say \\\"hi\\\"\""),
            ("back\\slash", "back\\\\slash"),
            ("bad\u{fffd}utf8", "bad\u{fffd}utf8"),
        ];
        for (raw, shown) in cases {
            assert_eq!(escape_untrusted(raw), shown, "{raw:?}");
        }
    }
}
