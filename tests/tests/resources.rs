//! Shared kernel resources, sampled by the agent: real zombies, a really full conntrack table,
//! this machine's task counts and pressure files, seen through `npd-agent event-dump` and
//! `check`. Every change to the machine is undone by a guard, also when a test fails.

use std::{net::UdpSocket, process::Command, time::Duration};

use npd_tests::{
    agent::{EventDump, check_report},
    machine::{Sysctl, command, own_cgroup_id, require_root},
};
use serde_json::Value;

/// An nftables table that makes the kernel track connections in the host's network
/// namespace (without a rule that needs it, nf_conntrack is idle: `entries` stays 0);
/// deleted on drop.
#[derive(Debug)]
struct ConntrackRule;

const NFT_TABLE: &str = "npd_conntrack_test";

impl ConntrackRule {
    fn add() -> Self {
        command("nft", &["--version"]).expect(
            "nft (Debian's nftables package) makes the kernel track connections: apt-get \
             install nftables",
        );
        let _ = command("nft", &["delete", "table", "inet", NFT_TABLE]);
        // A file, as `command` passes no stdin.
        let file = std::env::temp_dir().join(format!("{NFT_TABLE}-{}.nft", std::process::id()));
        std::fs::write(
            &file,
            format!(
                "table inet {NFT_TABLE} {{\n  chain out {{\n    type filter hook output \
                 priority 0; policy accept;\n    ct state new counter\n  }}\n}}\n"
            ),
        )
        .expect("write the ruleset");
        let loaded = command("nft", &["-f", file.to_str().unwrap()]);
        let _ = std::fs::remove_file(&file);
        let rule = Self;
        loaded.expect("the nftables table loads");
        rule
    }
}

impl Drop for ConntrackRule {
    fn drop(&mut self) {
        if let Err(err) = command("nft", &["delete", "table", "inet", NFT_TABLE]) {
            eprintln!("WARNING: could not delete nftables table {NFT_TABLE}: {err}");
        }
    }
}

/// New UDP flows from loopback to loopback, one conntrack entry each (unreplied: they
/// expire after `nf_conntrack_udp_timeout`, 30 s).
fn udp_flows(count: u16) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
    for port in 0..count {
        let _ = socket.send_to(b"npd", ("127.0.0.1", 40000 + port));
    }
}

fn entries() -> u64 {
    let stat = std::fs::read_to_string("/proc/1/net/stat/nf_conntrack").unwrap_or_default();
    stat.lines()
        .nth(1)
        .and_then(|row| row.split_whitespace().next())
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .unwrap_or(0)
}

#[test]
fn a_full_conntrack_table_is_conntrack_full() {
    require_root("loads an nftables table and lowers net.netfilter.nf_conntrack_max");
    let rule = ConntrackRule::add();
    let mut dump = EventDump::start(&["--detectors", "conntrack"]).expect("event-dump starts");
    // A limit just above what the host tracks now, then flows until it is full.
    let before = entries();
    let limit = before + 200;
    let max = Sysctl::set(
        "/proc/sys/net/netfilter/nf_conntrack_max",
        &limit.to_string(),
    )
    .expect("lower nf_conntrack_max");
    udp_flows(260);
    let filled = entries();
    assert!(
        filled * 100 >= limit * 90,
        "the table filled: {filled} of {limit} (was {before}, max {})",
        max.original()
    );
    let full = |e: &Value| e["kind"] == "conntrack_full";
    dump.collect_until(Duration::from_secs(15), |seen| seen.iter().any(full));
    let event = dump
        .seen
        .iter()
        .find(|e| full(e))
        .unwrap_or_else(|| panic!("no conntrack_full event: {:?}", dump.seen));
    assert_eq!(event["max"], limit, "{event}");
    assert!(event["percent"].as_f64().unwrap() >= 90.0, "{event}");
    assert!(
        event["entries"].as_u64().unwrap() >= limit * 9 / 10,
        "{event}"
    );
    assert_eq!(event["source"], "sampled");
    drop(max);
    drop(rule);
}

