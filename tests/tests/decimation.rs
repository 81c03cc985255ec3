//! End-to-end tests of the decimated output: the real relay over loopback,
//! its decimated group decoded with fastavro and compared with values
//! computed independently in Python (`py/decimation.py`).

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use apache_avro::Schema;
use relay_channel::status::Stats;
use serde_json::{json, Value as Json};
use speeddata_tests::*;

const SCHEMA: &str = r#"{"type": "record", "name": "Frame", "namespace": "test.decimation", "fields": [
  {"name": "time", "type": {"type": "long", "logicalType": "timestamp-micros"}},
  {"name": "seq", "type": "long"},
  {"name": "level", "type": "int"},
  {"name": "probe", "type": {"type": "record", "name": "Probe", "fields": [
    {"name": "voltage", "type": "double"},
    {"name": "offset", "type": "long"},
    {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [
      {"name": "temp", "type": "double"}]}}]}},
  {"name": "spectrum", "type": {"type": "array", "items": "double"}},
  {"name": "gain", "type": ["null", "double"]},
  {"name": "label", "type": "string"},
  {"name": "mode", "type": {"type": "enum", "name": "Mode", "symbols": ["IDLE", "RUN", "FAULT"]}}
]}"#;

/// Index of the record whose `level` is a spike (not a multiple of 100, so
/// downsample by 100 never picks it).
const SPIKE_AT: usize = 1_234;
const SPIKE: i32 = 1_000_000;

fn schema() -> Schema {
    Schema::parse_str(SCHEMA).unwrap()
}

/// Record `i` of the test stream: a sine with noise, integers of both signs,
/// a union that is sometimes null, an array that is sometimes shorter.
fn record(i: usize) -> Vec<u8> {
    let x = i as f64;
    let spectrum_len = if i.is_multiple_of(13) { 6 } else { 8 };
    let spectrum = (0..spectrum_len)
        .map(|k| Value::Double((x * 0.01 * (k + 1) as f64).sin() * 100.0 + k as f64 / 3.0))
        .collect();
    let gain = if i.is_multiple_of(5) {
        Value::Union(0, Box::new(Value::Null))
    } else {
        Value::Union(1, Box::new(Value::Double(1.0 + (i % 7) as f64 * 0.37)))
    };
    let level = if i == SPIKE_AT {
        SPIKE
    } else {
        (i * 37 % 1_001) as i32 - 500
    };
    let v = Value::Record(vec![
        (
            "time".into(),
            Value::TimestampMicros(1_700_000_000_000_000 + i as i64 * 100),
        ),
        ("seq".into(), Value::Long(i as i64)),
        ("level".into(), Value::Int(level)),
        (
            "probe".into(),
            Value::Record(vec![
                (
                    "voltage".into(),
                    Value::Double((x * 0.1).sin() * 3.3 + ((i * 7919) % 101) as f64 * 1e-4),
                ),
                (
                    "offset".into(),
                    Value::Long((i * i % 9_973) as i64 * 1_000_003 - 5_000_000_000),
                ),
                (
                    "inner".into(),
                    Value::Record(vec![(
                        "temp".into(),
                        Value::Double(20.0 + (i % 17) as f64 * 0.25),
                    )]),
                ),
            ]),
        ),
        ("spectrum".into(), Value::Array(spectrum)),
        ("gain".into(), gain),
        ("label".into(), Value::String(format!("r{i}"))),
        (
            "mode".into(),
            Value::Enum((i % 3) as u32, ["IDLE", "RUN", "FAULT"][i % 3].into()),
        ),
    ]);
    #[allow(deprecated)] // the plain way to encode one datum
    apache_avro::to_avro_datum(&schema(), v).unwrap()
}

fn records(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(record).collect()
}

/// Runs a relay whose [decimated] section ends with `keys`, sends `data`
/// with `send`, and returns what the decimated group carried and the final
/// stats line.
fn decimate(
    keys: &str,
    data: &[Vec<u8>],
    send: impl FnOnce(&Sender, &[Vec<u8>]),
) -> (Vec<Vec<u8>>, Stats) {
    // One relay at a time: time windows follow arrival times, and a sender
    // starved of CPU by the other tests would leave gaps no relay can fill.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempdir();
    let mut opts = ChannelOpts::unicast("dec");
    let group = group_addr(unique_group(), free_port());
    opts.decimated = Some((group, 1));
    opts.decimation = Some(keys.into());
    let relay = Relay::start_with_schema(dir.path(), &opts, SCHEMA);
    let rx = GroupReceiver::join(group);
    send(&Sender::new(opts.bind), data);
    relay.wait_received(data.len() as u64, Duration::from_secs(60));
    // Time windows end on the relay's clock: give the last one time to end.
    std::thread::sleep(Duration::from_millis(300));
    let (_, last) = relay.stop_ok();
    std::thread::sleep(Duration::from_millis(100));
    let got = rx.finish();
    assert_eq!(last.counters.received, data.len() as u64, "{last:?}");
    assert_eq!(last.counters.archived, data.len() as u64, "{last:?}");
    assert_eq!(
        last.counters.forwarded_decimated,
        got.len() as u64,
        "forwarded_decimated counts the datagrams sent on the group: {last:?}"
    );
    (got, last)
}

fn paced(per_ms: usize) -> impl FnOnce(&Sender, &[Vec<u8>]) {
    move |s, d| s.send_paced(d, per_ms)
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks the outputs against Python's own computation; its summary.
fn check(
    algorithm: &str,
    factor: Option<u32>,
    keep_last: &[&str],
    inputs: &[Vec<u8>],
    outputs: &[Vec<u8>],
) -> Json {
    let job = json!({
        "schema": SCHEMA,
        "algorithm": algorithm,
        "factor": factor,
        "keep_last": keep_last,
        "seq": "seq",
        "header": "",
        "inputs": inputs.iter().map(|d| hex(d)).collect::<Vec<_>>(),
        "outputs": outputs.iter().map(|d| hex(d)).collect::<Vec<_>>(),
    });
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("py/decimation.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(job.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{algorithm} {factor:?}: the decimated output differs from Python's:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn by_count(algorithm: &str, factor: u32, keep_last: &[&str]) -> (Vec<Vec<u8>>, Json) {
    let data = records(2_000);
    let keys = format!(
        "algorithm = \"{algorithm}\"\nfactor = {factor}\nkeep_last = {}",
        json!(keep_last)
    );
    let (got, _) = decimate(&keys, &data, paced(20));
    let summary = check(algorithm, Some(factor), keep_last, &data, &got);
    let windows = 2_000 / factor as usize;
    assert_eq!(summary["windows"], windows as u64, "{summary}");
    (got, summary)
}

#[test]
fn average_by_count_matches_python() {
    let (got, summary) = by_count("average", 10, &["seq", "probe.offset"]);
    assert_eq!(got.len(), 200);
    assert!(summary["values"].as_u64().unwrap() > 200 * 10, "{summary}");
}

#[test]
fn rms_by_count_matches_python() {
    let (got, _) = by_count("rms", 7, &["seq"]);
    assert_eq!(got.len(), 2_000 / 7);
}

#[test]
fn minmax_by_count_matches_python_and_keeps_the_spike_that_downsample_misses() {
    let (got, _) = by_count("minmax", 100, &["seq"]);
    assert_eq!(got.len(), 2 * 20);
    #[allow(deprecated)]
    let level = |d: &[u8]| match apache_avro::from_avro_datum(&schema(), &mut &d[..], None) {
        Ok(Value::Record(f)) => f[2].1.clone(),
        other => panic!("{other:?}"),
    };
    let spike_window = SPIKE_AT / 100;
    assert_eq!(level(&got[2 * spike_window + 1]), Value::Int(SPIKE));

    let (down, _) = by_count("downsample", 100, &[]);
    assert_eq!(down.len(), 20);
    assert!(down.iter().all(|d| level(d) != Value::Int(SPIKE)));
}

#[test]
fn time_windows_match_python_for_every_algorithm() {
    // 1 kHz for 1.5 s at 20 windows a second: 30 windows of 50.
    let data = records(1_500);
    for algorithm in ["average", "rms", "minmax", "downsample"] {
        let keys = format!("algorithm = \"{algorithm}\"\nrate_hz = 20\nkeep_last = [\"seq\"]");
        let sent = std::cell::RefCell::new(Vec::new());
        let (got, _) = decimate(&keys, &data, |s, d| {
            *sent.borrow_mut() = send_timed(s, d, 1_000);
        });
        let summary = check(algorithm, None, &["seq"], &data, &got);
        let windows = summary["windows"].as_u64().unwrap();
        if longest_gap(&sent.borrow(), None) < Duration::from_millis(40) {
            assert!(
                (29..=32).contains(&windows),
                "{algorithm}: {windows} windows"
            );
        }
    }
}

/// Sends `data` at `per_s` datagrams a second on an absolute schedule
/// (at most half a millisecond early); returns when each went out.
fn send_timed(s: &Sender, data: &[Vec<u8>], per_s: u32) -> Vec<Instant> {
    let start = Instant::now();
    let mut sent = Vec::with_capacity(data.len());
    for (i, d) in data.iter().enumerate() {
        let due = start + Duration::from_secs_f64(i as f64 / f64::from(per_s));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            if wait > Duration::from_micros(500) {
                std::thread::sleep(wait);
            }
        }
        s.send(d);
        sent.push(Instant::now());
    }
    sent
}

/// The longest gap between two sends, leaving out the pause after send
/// `pause_after`.
fn longest_gap(sent: &[Instant], pause_after: Option<usize>) -> Duration {
    sent.windows(2)
        .enumerate()
        .filter(|(i, _)| Some(*i) != pause_after)
        .map(|(_, w)| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default()
}

/// A sender that never paused for 15 ms (a 20 ms window always got some of
/// its datagrams); one starved of CPU by the machine did not send a steady
/// input, and window counts tell nothing then.
const STEADY: Duration = Duration::from_millis(15);

/// Feeds `n` records at `per_s` a second to `rate_hz = 50`: every window's
/// values match Python's, and for a steady input there are 200 ± 2 windows
/// in 4 s.
fn windows_at_50_hz(n: usize, per_s: u32) {
    let data = records(n);
    let keys = "algorithm = \"average\"\nrate_hz = 50\nkeep_last = [\"seq\"]";
    let sent = std::cell::RefCell::new(Vec::new());
    let (got, _) = decimate(keys, &data, |s, d| {
        *sent.borrow_mut() = send_timed(s, d, per_s)
    });
    check("average", None, &["seq"], &data, &got);
    let gap = longest_gap(&sent.borrow(), None);
    if gap < STEADY {
        assert!(
            (198..=202).contains(&got.len()),
            "{per_s}/s for 4 s at rate_hz = 50: {} windows",
            got.len()
        );
    } else {
        eprintln!("{per_s}/s: the sender stalled for {gap:?}: window count not checked");
    }
}

#[test]
fn rate_hz_bounds_the_windows_at_a_high_input_rate() {
    // 10 kHz for 4 s at 50 windows a second: 200 ± 2.
    windows_at_50_hz(40_000, 10_000);
}

#[test]
fn rate_hz_bounds_the_windows_at_a_low_input_rate() {
    // 100 Hz for 4 s at 50 windows a second: 200 ± 2.
    windows_at_50_hz(400, 100);
}

#[test]
fn a_pause_in_the_input_makes_no_empty_windows() {
    // 1 s at 1 kHz, a second of silence, 1 s more. The pause sends nothing:
    // the window before it ends with the last record before it, the next
    // starts with the first after it, and a steady input gives 100 windows
    // at 50 a second, not 150. Python checks every window's values.
    let data = records(2_000);
    let keys = "algorithm = \"average\"\nrate_hz = 50\nkeep_last = [\"seq\"]";
    let sent = std::cell::RefCell::new(Vec::new());
    let (got, _) = decimate(keys, &data, |s, d| {
        let mut t = send_timed(s, &d[..1_000], 1_000);
        std::thread::sleep(Duration::from_secs(1));
        t.extend(send_timed(s, &d[1_000..], 1_000));
        *sent.borrow_mut() = t;
    });
    check("average", None, &["seq"], &data, &got);
    #[allow(deprecated)]
    let seq = |d: &[u8]| match apache_avro::from_avro_datum(&schema(), &mut &d[..], None) {
        Ok(Value::Record(f)) => f[1].1.clone(),
        other => panic!("{other:?}"),
    };
    let ends: Vec<Value> = got.iter().map(|d| seq(d)).collect();
    assert!(
        ends.contains(&Value::Long(999)),
        "no window ends with the last record before the pause"
    );
    let gap = longest_gap(&sent.borrow(), Some(999));
    if gap < STEADY {
        assert!((98..=102).contains(&got.len()), "{} windows", got.len());
    } else {
        eprintln!("the sender stalled for {gap:?}: window count not checked");
    }
}

#[test]
fn decimation_keys_are_checked_and_named() {
    let dir = tempdir();
    let cases = [
        (
            "algorithm = \"average\"\nfactor = 5\nrate_hz = 10",
            "decimated.factor",
        ),
        ("algorithm = \"average\"", "decimated.factor"),
        (
            "algorithm = \"average\"\nfactor = 5\nkeep_last = [\"probe.nope\"]",
            "decimated.keep_last",
        ),
        ("algorithm = \"median\"\nfactor = 5", "decimated.algorithm"),
        ("algorithm = \"average\"\nrate_hz = 0", "decimated.rate_hz"),
    ];
    for (keys, key) in cases {
        let mut opts = ChannelOpts::unicast("keys");
        opts.decimated = Some((group_addr(unique_group(), free_port()), 1));
        opts.decimation = Some(keys.into());
        let p = write_channel_with_schema(dir.path(), &opts, SCHEMA);
        let (code, _, err) = run_relay(&["check", "--config", p.to_str().unwrap()]);
        assert_eq!(code, 78, "{keys}: {err}");
        assert!(
            err.contains(key),
            "{keys}: the error does not name {key}:\n{err}"
        );
    }
    // The field is named too.
    let mut opts = ChannelOpts::unicast("keys");
    opts.decimated = Some((group_addr(unique_group(), free_port()), 1));
    opts.decimation =
        Some("algorithm = \"minmax\"\nfactor = 5\nkeep_last = [\"probe.nope\"]".into());
    let p = write_channel_with_schema(dir.path(), &opts, SCHEMA);
    let (_, _, err) = run_relay(&["check", "--config", p.to_str().unwrap()]);
    assert!(err.contains("probe.nope") && err.contains("Probe"), "{err}");
}
