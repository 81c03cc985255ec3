//! The receive thread first: what `ps -L -o comm,cls,rtprio,psr` shows of
//! a running relay. The receive thread takes `receive.cpu` and
//! `receive.realtime` when asked, and only it; refused, the relay says
//! what to grant and runs on.
#![cfg(target_os = "linux")]

use std::fs;
use std::path::Path;
use std::time::Duration;

use speeddata_tests::*;

/// One thread of a process as /proc shows it.
#[derive(Debug)]
struct Task {
    comm: String,
    rt_priority: i64,
    /// 0 normal, 1 FIFO, 2 RR, 3 batch, 5 idle.
    policy: i64,
    cpus_allowed: Vec<usize>,
}

const SCHED_OTHER: i64 = 0;
const SCHED_FIFO: i64 = 1;

fn tasks(pid: u32) -> Vec<Task> {
    let mut out = Vec::new();
    for e in fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = e.unwrap().path();
        let stat = fs::read_to_string(dir.join("stat")).unwrap();
        // "tid (comm) state ...": fields after the last ')' start at 3.
        let close = stat.rfind(')').unwrap();
        let comm = stat[stat.find('(').unwrap() + 1..close].to_string();
        let f: Vec<&str> = stat[close + 2..].split(' ').collect();
        let field = |n: usize| f[n - 3].parse::<i64>().unwrap();
        let cpus_allowed = cpus_allowed(&dir.join("status"));
        out.push(Task {
            comm,
            rt_priority: field(40),
            policy: field(41),
            cpus_allowed,
        });
    }
    out
}

fn task<'a>(ts: &'a [Task], comm: &str) -> &'a Task {
    ts.iter()
        .find(|t| t.comm == comm)
        .unwrap_or_else(|| panic!("no thread {comm} in {ts:#?}"))
}

/// `Cpus_allowed_list` of a /proc status file ("0-1", "0,2"), as CPUs.
fn cpus_allowed(status: &Path) -> Vec<usize> {
    let status = fs::read_to_string(status).unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

/// The CPUs this test may run on.
fn allowed_cpus() -> Vec<usize> {
    cpus_allowed(Path::new("/proc/self/status"))
}

/// Feeds 2,000 records and checks every one reached the archive: the
/// lowered threads still do their work.
fn feed_and_check(r: Relay, bind: std::net::SocketAddrV4) {
    r.feed(bind, &example_records(2_000, "sched"), 50);
    r.wait_received(2_000, Duration::from_secs(20));
    let (_, stats) = r.stop_ok();
    assert_eq!(stats.counters.archived, 2_000, "{stats:?}");
    assert_balanced(&stats);
}

/// Whether this process may ask for SCHED_FIFO at priority 1: it holds
/// CAP_SYS_NICE or an RLIMIT_RTPRIO of at least 1 (what the systemd unit
/// grants, LimitRTPRIO=1). The relay inherits both.
fn may_realtime() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    const CAP_SYS_NICE: u32 = 23;
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: fills `rl`.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_RTPRIO, &mut rl) }, 0);
    eff & (1 << CAP_SYS_NICE) != 0 || rl.rlim_cur >= 1
}

#[test]
fn receive_cpu_pins_and_receive_realtime_raises_the_receive_thread() {
    let cpu = *allowed_cpus().last().unwrap();
    let dir = tempdir();
    let mut opts = ChannelOpts::unicast("rt");
    opts.receive = vec![format!("cpu = {cpu}"), "realtime = true".into()];
    let r = Relay::start(dir.path(), &opts);
    let ts = tasks(r.pid());
    let receive = task(&ts, "receive");
    assert_eq!(receive.cpus_allowed, vec![cpu], "{ts:#?}");
    if may_realtime() {
        assert_eq!(
            (receive.policy, receive.rt_priority),
            (SCHED_FIFO, 1),
            "{ts:#?}\n{}",
            r.stderr()
        );
    } else {
        // Run without CAP_SYS_NICE (CI runs as root, and takes the branch
        // above): refused, said, and running on.
        eprintln!("this test runs without CAP_SYS_NICE or RLIMIT_RTPRIO: checking the refusal");
        assert_eq!(receive.policy, SCHED_OTHER, "{ts:#?}");
        assert!(r.stderr().contains("LimitRTPRIO=1"), "{}", r.stderr());
    }
    // Only the receive thread.
    let archive = task(&ts, "archive");
    assert_eq!(archive.policy, SCHED_OTHER, "{ts:#?}");
    assert_eq!(archive.cpus_allowed, allowed_cpus(), "{ts:#?}");
    feed_and_check(r, opts.bind);
}

#[test]
fn receive_realtime_refused_says_what_to_grant_and_runs_on() {
    let dir = tempdir();
    let mut opts = ChannelOpts::unicast("nort");
    opts.receive = vec!["realtime = true".into()];
    let config = write_channel(dir.path(), &opts);
    // No RLIMIT_RTPRIO and no CAP_SYS_NICE (dropped from the bounding set,
    // so root loses it too at exec).
    let mut r = Relay::spawn_wrapped(
        dir.path(),
        &config,
        &opts.name,
        &[
            "setpriv",
            "--bounding-set=-sys_nice",
            "--inh-caps=-sys_nice",
            "--",
            "prlimit",
            "--rtprio=0",
            "--",
        ],
    );
    r.wait_ready(Duration::from_secs(20));
    let ts = tasks(r.pid());
    assert_eq!(task(&ts, "receive").policy, SCHED_OTHER, "{ts:#?}");
    let err = r.stderr();
    assert!(
        err.contains("receive.realtime") && err.contains("LimitRTPRIO=1"),
        "{err}"
    );
    feed_and_check(r, opts.bind);
}

#[test]
fn receive_cpu_outside_the_allowed_set_exits_78_naming_the_key() {
    let dir = tempdir();
    let mut opts = ChannelOpts::unicast("badcpu");
    opts.receive = vec!["cpu = 4096".into()];
    let config = write_channel(dir.path(), &opts);
    let (code, _, err) = run_relay(&["run", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("receive.cpu") && err.contains("4096") && err.contains("allowed"),
        "{err}"
    );
}
