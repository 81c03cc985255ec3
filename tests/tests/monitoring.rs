//! The monitoring shipped in packaging/monitoring/ on the real engines: two
//! orchestrators (two hosts: separate configurations and HTTP ports on
//! 127.0.0.1), Debian's Prometheus scraping both in the job `speeddata`
//! (targets from a file, as in the shipped prometheus.yml) with the shipped
//! alerts.yml and recording.yml loaded as they are (their real `for`), and
//! Debian's Alertmanager sending to a webhook this test serves.
//!
//! Needs `prometheus` and `prometheus-alertmanager` (packaging/monitoring/deps
//! installs them; scripts/test runs it). Without them the test says so and
//! passes, except under CI (`CI` set), where it fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddrV4, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use speeddata_api::State;
use speeddata_tests::fleet::*;
use speeddata_tests::*;

/// Prometheus's scrape interval here: the alert must reach the webhook
/// within the rule's `for` plus two of these.
const SCRAPE: Duration = Duration::from_secs(1);

/// A program on PATH, if there.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// A process this test started, stopped (SIGTERM, then SIGKILL) when
/// dropped; its output goes to `log`.
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(name: &'static str, program: &Path, args: &[String], log: PathBuf) -> Daemon {
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        Daemon { name, child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            kill(self.child.id(), libc::SIGTERM);
            if wait_child(&mut self.child, Duration::from_secs(10)).is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// What the webhook received: each notification with when it came.
type Received = Arc<Mutex<Vec<(Instant, Json)>>>;

/// Serves Alertmanager's webhook on 127.0.0.1: every POST body (JSON) is
/// kept. At most 10,000 requests.
fn webhook() -> (u16, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Received = Arc::default();
    let keep = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(10_000) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok() {
                if let Ok(json) = serde_json::from_slice(&body) {
                    keep.lock().unwrap().push((Instant::now(), json));
                }
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, got)
}

/// Every alert of every notification, with when it came.
fn alerts(got: &Received) -> Vec<(Instant, Json)> {
    got.lock()
        .unwrap()
        .iter()
        .flat_map(|(at, n)| {
            n["alerts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |a| (*at, a))
        })
        .collect()
}

/// Waits (at most `limit`) for an alert of the webhook that `matches`.
fn wait_alert(
    got: &Received,
    limit: Duration,
    matches: impl Fn(&Json) -> bool,
) -> Option<(Instant, Json)> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Some(found) = alerts(got).into_iter().find(|(_, a)| matches(a)) {
            return Some(found);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build(),
    )
}

/// GET on Prometheus's HTTP API: its `data`, or `None` while it does not
/// answer.
fn prom_get(port: u16, path: &str, query: &[(&str, &str)]) -> Option<Json> {
    let mut request = agent().get(format!("http://127.0.0.1:{port}{path}"));
    for (k, v) in query {
        request = request.query(*k, *v);
    }
    let mut response = request.call().ok()?;
    let body: Json = serde_json::from_str(&response.body_mut().read_to_string().ok()?).ok()?;
    (body["status"] == "success").then(|| body["data"].clone())
}

/// An instant query's samples: (labels, value); `None` while Prometheus
/// does not answer.
fn try_query(port: u16, q: &str) -> Option<Vec<(Json, f64)>> {
    let data = prom_get(port, "/api/v1/query", &[("query", q)])?;
    Some(
        data["result"]
            .as_array()?
            .iter()
            .map(|s| {
                (
                    s["metric"].clone(),
                    s["value"][1].as_str().unwrap().parse().unwrap(),
                )
            })
            .collect(),
    )
}

fn query(port: u16, q: &str) -> Vec<(Json, f64)> {
    try_query(port, q).unwrap_or_else(|| panic!("Prometheus did not answer the query {q}"))
}

/// The one value of a query that must have exactly one sample.
fn query_one(port: u16, q: &str) -> f64 {
    let r = query(port, q);
    assert_eq!(r.len(), 1, "{q}: {r:?}");
    r[0].1
}

/// The sum of every sample of `name` on a /metrics page.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(['{', ' ']))
        })
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum()
}

/// Datagrams to each address at its rate a second, paced by deadlines,
/// until `stop` (or 10 minutes).
fn traffic(to: Vec<(SocketAddrV4, u32)>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let records = example_records(1_000, "monitored");
        let senders: Vec<_> = to.iter().map(|(a, _)| Sender::new(*a)).collect();
        let start = Instant::now();
        let mut sent = vec![0u64; to.len()];
        while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(600) {
            let t = start.elapsed().as_secs_f64();
            for (i, (_, rate)) in to.iter().enumerate() {
                while (sent[i] as f64) < t * f64::from(*rate) {
                    senders[i].send(&records[sent[i] as usize % records.len()]);
                    sent[i] += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    })
}

#[test]
fn a_failing_channel_alerts_through_prometheus_and_alertmanager_and_the_fleet_rules_add_up() {
    let (Some(prometheus), Some(alertmanager)) = (
        which("prometheus"),
        which("prometheus-alertmanager").or_else(|| which("alertmanager")),
    ) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "prometheus or prometheus-alertmanager is missing under CI: packaging/monitoring/deps installs them"
        );
        eprintln!(
            "skipped: prometheus or prometheus-alertmanager is not installed \
             (packaging/monitoring/deps installs them; CI runs this test)"
        );
        return;
    };
    let monitoring = root().join("packaging/monitoring");
    let work = tempdir();
    let (hook_port, got) = webhook();

    // Host a: channel east. Host b: channel west, and later south, retried
    // every second at most and never parked while its port is taken.
    let host_a = FleetDir::new(&[]);
    let host_b = FleetDir::new(&[
        "backoff_initial = \"200ms\"",
        "backoff_max = \"1s\"",
        "max_restarts = 10000",
    ]);
    let east = ChannelOpts::unicast("east");
    let west = ChannelOpts::unicast("west");
    host_a.add(&east);
    host_b.add(&west);
    let orch_a = host_a.start();
    let orch_b = host_b.start();
    orch_a.wait_ready("east");
    orch_b.wait_ready("west");
    let instance_a = format!("127.0.0.1:{}", orch_a.port);
    let instance_b = format!("127.0.0.1:{}", orch_b.port);
    let stop = Arc::new(AtomicBool::new(false));
    let sending = traffic(vec![(east.bind, 100), (west.bind, 50)], stop.clone());

    // Alertmanager: one group per alert, host and channel, sent at once.
    let am_port = free_tcp_port();
    std::fs::write(
        work.path().join("alertmanager.yml"),
        format!(
            "route:\n  receiver: test\n  group_by: [alertname, instance, channel]\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: test\n    webhook_configs:\n      - url: http://127.0.0.1:{hook_port}/\n        send_resolved: true\n"
        ),
    )
    .unwrap();
    std::fs::create_dir(work.path().join("am-data")).unwrap();
    let am = Daemon::start(
        "alertmanager",
        &alertmanager,
        &[
            format!(
                "--config.file={}",
                work.path().join("alertmanager.yml").display()
            ),
            format!("--storage.path={}", work.path().join("am-data").display()),
            format!("--web.listen-address=127.0.0.1:{am_port}"),
            "--cluster.listen-address=".into(),
        ],
        work.path().join("alertmanager.log"),
    );

    // Prometheus: the shipped rule files as they are; targets from a file.
    let prom_port = free_tcp_port();
    std::fs::create_dir(work.path().join("targets")).unwrap();
    std::fs::write(
        work.path().join("targets/speeddata.yml"),
        format!("- targets: [\"{instance_a}\", \"{instance_b}\"]\n"),
    )
    .unwrap();
    std::fs::write(
        work.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: {scrape}s\n  evaluation_interval: 500ms\n\
             rule_files:\n  - {alerts}\n  - {recording}\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [\"127.0.0.1:{am_port}\"]\n\
             scrape_configs:\n  - job_name: speeddata\n    file_sd_configs:\n      - files: [\"{targets}/*.yml\"]\n",
            scrape = SCRAPE.as_secs(),
            alerts = monitoring.join("alerts.yml").display(),
            recording = monitoring.join("recording.yml").display(),
            targets = work.path().join("targets").display(),
        ),
    )
    .unwrap();
    let prom = Daemon::start(
        "prometheus",
        &prometheus,
        &[
            format!(
                "--config.file={}",
                work.path().join("prometheus.yml").display()
            ),
            format!(
                "--storage.tsdb.path={}",
                work.path().join("prom-data").display()
            ),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
            "--rules.alert.resend-delay=1s".into(),
        ],
        work.path().join("prometheus.log"),
    );
    let logs = || {
        format!(
            "--- {}:\n{}\n--- {}:\n{}",
            prom.name,
            prom.log(),
            am.name,
            am.log()
        )
    };

    // Both hosts scraped, and the rule's `for` as Prometheus loaded it.
    let end = Instant::now() + Duration::from_secs(30);
    while try_query(prom_port, "up{job=\"speeddata\"} == 1").map_or(0, |r| r.len()) < 2 {
        assert!(
            Instant::now() < end,
            "Prometheus did not scrape both hosts in 30 s\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let rules = prom_get(prom_port, "/api/v1/rules", &[]).unwrap();
    let not_ready = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .find(|r| r["name"] == "SpeeddataChannelNotReady")
        .unwrap_or_else(|| panic!("SpeeddataChannelNotReady is not loaded: {rules}"))
        .clone();
    let hold = Duration::from_secs_f64(not_ready["duration"].as_f64().unwrap());
    assert_eq!(
        hold,
        Duration::from_secs(60),
        "alerts.yml's `for` changed: {not_ready}"
    );

    // A channel made to fail: its port is taken.
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut south = ChannelOpts::unicast("south");
    south.bind = match taken.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    };
    host_b.add(&south);
    orch_b.wait_channel("south", Duration::from_secs(10), |c| {
        c.state != State::Ready
    });
    let failed_at = Instant::now();
    let is_south = |a: &Json, status: &str| {
        a["status"] == status
            && a["labels"]["alertname"] == "SpeeddataChannelNotReady"
            && a["labels"]["instance"] == instance_b.as_str()
            && a["labels"]["channel"] == "south"
    };
    let budget = hold + 2 * SCRAPE;
    let (fired_at, alert) = wait_alert(&got, budget + Duration::from_secs(30), |a| {
        is_south(a, "firing")
    })
    .unwrap_or_else(|| {
        panic!(
            "no SpeeddataChannelNotReady for south at the webhook; got {:?}\n{}",
            alerts(&got),
            logs()
        )
    });
    let to_alert = fired_at - failed_at;
    eprintln!("SpeeddataChannelNotReady reached the webhook {to_alert:?} after the channel failed (for: {hold:?}, scrape interval {SCRAPE:?})");
    assert!(
        to_alert <= budget,
        "the alert came {to_alert:?} after the failure, past `for` + two scrape intervals ({budget:?})"
    );
    assert!(
        to_alert >= hold,
        "the alert came {to_alert:?} after the failure, before its `for` ({hold:?})"
    );
    assert_eq!(alert["labels"]["severity"], "critical", "{alert}");
    let summary = alert["annotations"]["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("south") && summary.contains(&instance_b),
        "the summary names neither the channel nor the host: {summary}"
    );
    assert!(
        alert["annotations"]["runbook_url"]
            .as_str()
            .is_some_and(|u| u.ends_with("docs/operations.md#speeddatachannelnotready")),
        "{alert}"
    );

    // The fleet's recording rules equal the sum of the hosts' own /metrics:
    // the channel counts exactly, the rates over the same stretch of steady
    // traffic (150 datagrams a second, 100 to host a and 50 to host b).
    let (page_a, page_b) = (orch_a.metrics(), orch_b.metrics());
    let ready = metric_sum(
        &page_a,
        "speeddata_channel_state{channel=\"east\",state=\"ready\"}",
    ) + metric_sum(
        &page_b,
        "speeddata_channel_state{channel=\"west\",state=\"ready\"}",
    ) + metric_sum(
        &page_b,
        "speeddata_channel_state{channel=\"south\",state=\"ready\"}",
    );
    let channels = [&page_a, &page_b]
        .iter()
        .map(|p| {
            p.lines()
                .filter(|l| {
                    l.starts_with("speeddata_channel_state{") && l.contains("state=\"ready\"")
                })
                .count()
        })
        .sum::<usize>();
    assert_eq!(
        (channels, ready),
        (3, 2.0),
        "host a:\n{page_a}\nhost b:\n{page_b}"
    );
    assert_eq!(query_one(prom_port, "job:speeddata_channels:count"), 3.0);
    assert_eq!(
        query_one(prom_port, "job:speeddata_channels_ready:count"),
        2.0
    );
    let ratio = query_one(prom_port, "job:speeddata_channels_ready:ratio");
    assert!((ratio - 2.0 / 3.0).abs() < 1e-9, "ready ratio {ratio}");
    let received = |page: &str| metric_sum(page, "speeddata_channel_received_datagrams_total");
    let (t1, r1) = (
        Instant::now(),
        received(&orch_a.metrics()) + received(&orch_b.metrics()),
    );
    std::thread::sleep(Duration::from_secs(20));
    let r2 = received(&orch_a.metrics()) + received(&orch_b.metrics());
    let from_hosts = (r2 - r1) / t1.elapsed().as_secs_f64();
    let fleet = query_one(prom_port, "job:speeddata_channel_received_datagrams:rate1m");
    eprintln!("received a second: {from_hosts:.1} from the hosts' /metrics, {fleet:.1} from job:speeddata_channel_received_datagrams:rate1m");
    assert!(
        (fleet - from_hosts).abs() <= 0.1 * from_hosts && (from_hosts - 150.0).abs() <= 15.0,
        "fleet rate {fleet} against {from_hosts} from the hosts' /metrics (150 sent a second)"
    );
    for rule in [
        "received_datagrams",
        "archived_records",
        "dropped_datagrams",
    ] {
        let diff = query_one(
            prom_port,
            &format!("sum(job:speeddata_channel_{rule}:rate1m) - sum(instance:speeddata_channel_{rule}:rate1m)"),
        );
        assert!(
            diff.abs() < 1e-9,
            "job:…{rule} is not the sum of the hosts': {diff}"
        );
    }
    assert_eq!(
        query_one(prom_port, "job:speeddata_channel_dropped_datagrams:rate1m"),
        0.0
    );

    // Freeing the port resolves the alert.
    drop(taken);
    let freed_at = Instant::now();
    orch_b.wait_channel("south", Duration::from_secs(20), |c| {
        c.state == State::Ready
    });
    let (resolved_at, _) = wait_alert(&got, Duration::from_secs(30), |a| is_south(a, "resolved"))
        .unwrap_or_else(|| {
            panic!(
                "SpeeddataChannelNotReady for south never resolved; got {:?}\n{}",
                alerts(&got),
                logs()
            )
        });
    eprintln!(
        "resolved at the webhook {:?} after the port was freed",
        resolved_at - freed_at
    );

    // Nothing was said of the healthy channels, nor of host a.
    for (_, a) in alerts(&got) {
        assert!(
            a["labels"]["instance"] == instance_b.as_str() && a["labels"]["channel"] == "south",
            "an alert about a healthy host or channel: {a}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    sending.join().unwrap();
}
