//! End-to-end tests of the live stream, `GET /api/v1/channels/{name}/live`:
//! the real orchestrator and relays over loopback, WebSocket clients
//! (tungstenite) compared with a multicast receiver of the same decimated
//! group, whose datagrams apache-avro decodes.

use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use serde_json::Value as Json;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use speeddata_tests::fleet::{FleetDir, Orchestrator};
use speeddata_tests::{
    example_records, example_records_from, example_schema, free_port, group_addr, unique_group,
    ChannelOpts, GroupReceiver, Sender,
};
use tungstenite::{HandshakeError, Message, WebSocket};

type Ws = WebSocket<TcpStream>;

/// A fleet of one channel `live` whose decimated output keeps one record
/// in `factor`, running and ready.
fn fleet_with_decimated(factor: u32) -> (FleetDir, Orchestrator, ChannelOpts, SocketAddrV4) {
    let fleet = FleetDir::new(&[]);
    let mut opts = ChannelOpts::unicast("live");
    let group = group_addr(unique_group(), free_port());
    opts.decimated = Some((group, factor));
    fleet.add(&opts);
    let o = fleet.start();
    o.wait_ready("live");
    (fleet, o, opts, group)
}

/// Opens the live stream at `path`; the handshake's failure is returned
/// as the HTTP status and body.
fn connect_with(port: u16, path: &str, rcvbuf: Option<usize>) -> Result<Ws, (u16, String)> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    if let Some(n) = rcvbuf {
        s.set_recv_buffer_size(n).unwrap();
    }
    s.connect(&SockAddr::from(SocketAddrV4::new(
        Ipv4Addr::LOCALHOST,
        port,
    )))
    .unwrap();
    let stream: TcpStream = s.into();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    match tungstenite::client(format!("ws://127.0.0.1:{port}{path}"), stream) {
        Ok((ws, _)) => Ok(ws),
        Err(HandshakeError::Failure(tungstenite::Error::Http(r))) => Err((
            r.status().as_u16(),
            String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned(),
        )),
        Err(e) => panic!("{path}: handshake: {e}"),
    }
}

fn connect(o: &Orchestrator, path: &str) -> Ws {
    connect_with(o.port, path, None)
        .unwrap_or_else(|(status, body)| panic!("{path}: answered {status}: {body}"))
}

/// What a client has read: records, and the drops it was told of. The
/// stream's messages are read as JSON on purpose: records by the field
/// names of the channel's schema, `{"dropped": n}` and `{"error": ...}` are
/// the stream's wire format, which these tests check, not API types.
#[derive(Default)]
struct Got {
    records: Vec<Json>,
    dropped: u64,
    messages: usize,
    /// When each record arrived.
    at: Vec<Instant>,
}

impl Got {
    /// Reads what has arrived, until nothing comes for 200 ms; `false` once
    /// the connection is closed.
    fn read(&mut self, ws: &mut Ws) -> bool {
        loop {
            match ws.read() {
                Ok(Message::Text(t)) => {
                    self.messages += 1;
                    let v: Json = serde_json::from_str(t.as_str()).unwrap();
                    let now = Instant::now();
                    match v {
                        Json::Array(a) => {
                            assert!(!a.is_empty(), "an empty batch");
                            self.at.extend(a.iter().map(|_| now));
                            self.records.extend(a);
                        }
                        Json::Object(ref m) if m.len() == 1 && m.contains_key("dropped") => {
                            self.dropped += m["dropped"].as_u64().unwrap();
                        }
                        other => {
                            self.at.push(now);
                            self.records.push(other);
                        }
                    }
                }
                Ok(Message::Close(_)) => return false,
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return true
                }
                Err(_) => return false,
            }
        }
    }

    /// Reads until `n` records arrived or `limit` passed.
    fn read_until(&mut self, ws: &mut Ws, n: usize, limit: Duration) {
        let end = Instant::now() + limit;
        while self.records.len() < n && Instant::now() < end {
            if !self.read(ws) {
                break;
            }
        }
    }
}

/// Each datagram decoded by apache-avro.
fn decode(datagrams: &[Vec<u8>]) -> Vec<Vec<(String, Value)>> {
    let schema = example_schema();
    let reader = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .unwrap();
    datagrams
        .iter()
        .map(|d| match reader.read_value(&mut &d[..]).unwrap() {
            Value::Record(f) => f,
            other => panic!("not a record: {other:?}"),
        })
        .collect()
}

/// Asserts that a JSON record holds exactly the Avro record's fields.
fn assert_same(avro: &[(String, Value)], json: &Json, i: usize) {
    let obj = json.as_object().unwrap_or_else(|| panic!("#{i}: {json}"));
    let names: Vec<&str> = avro.iter().map(|(k, _)| k.as_str()).collect();
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    assert_eq!(keys, names, "#{i}: the fields, in order");
    for (k, v) in avro {
        let j = &obj[k];
        let same = match v {
            Value::TimestampMicros(t) | Value::Long(t) => j.as_i64() == Some(*t),
            Value::Int(n) => j.as_i64() == Some(i64::from(*n)),
            Value::String(s) => j.as_str() == Some(s),
            Value::Double(d) => j.as_f64() == Some(*d),
            other => panic!("#{i}: field {k}: unexpected {other:?}"),
        };
        assert!(same, "#{i}: field {k}: avro {v:?}, JSON {j}");
    }
}

#[test]
fn a_client_gets_exactly_the_records_of_the_decimated_group() {
    let (_fleet, o, opts, group) = fleet_with_decimated(5);
    let mut ws = connect(&o, "/api/v1/channels/live/live?max_rate=100000");
    let rx = GroupReceiver::join(group);
    Sender::new(opts.bind).send_paced(&example_records(2_000, "live"), 1);
    let mut got = Got::default();
    got.read_until(&mut ws, 400, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    got.read(&mut ws);
    let sent = decode(&rx.finish());
    assert_eq!(sent.len(), 400, "the group carried one record in 5");
    assert_eq!(got.records.len(), sent.len(), "the client got every record");
    assert_eq!(got.dropped, 0);
    for (i, (a, j)) in sent.iter().zip(&got.records).enumerate() {
        assert_same(a, j, i);
    }
    // At shutdown the stream is closed, and does not hold the orchestrator.
    let mut o = o;
    o.signal(libc::SIGTERM);
    assert_eq!(o.wait_exit(Duration::from_secs(20)), 0, "{}", o.log());
    let end = Instant::now() + Duration::from_secs(5);
    while got.read(&mut ws) {
        assert!(Instant::now() < end, "the stream stayed open");
    }
}

#[test]
fn single_object_datagrams_are_decoded_after_their_header() {
    let fleet = FleetDir::new(&[]);
    let mut opts = ChannelOpts::unicast("so");
    opts.receive = vec!["encoding = \"single_object\"".into()];
    let group = group_addr(unique_group(), free_port());
    opts.decimated = Some((group, 1));
    fleet.add(&opts);
    let o = fleet.start();
    o.wait_ready("so");
    let mut ws = connect(&o, "/api/v1/channels/so/live?max_rate=100000");
    let rx = GroupReceiver::join(group);
    let schema = example_schema();
    let data: Vec<Vec<u8>> = (0..50)
        .map(|i| speeddata_tests::example_single_object(&schema, i, "single"))
        .collect();
    Sender::new(opts.bind).send_paced(&data, 1);
    let mut got = Got::default();
    got.read_until(&mut ws, 50, Duration::from_secs(20));
    let carried = rx.finish();
    assert_eq!(carried.len(), 50);
    // The group carries the datagrams whole, header included.
    let datums: Vec<Vec<u8>> = carried
        .iter()
        .map(|d| {
            assert_eq!(&d[..2], &[0xC3, 0x01]);
            d[10..].to_vec()
        })
        .collect();
    assert_eq!(got.records.len(), 50);
    for (i, (a, j)) in decode(&datums).iter().zip(&got.records).enumerate() {
        assert_same(a, j, i);
    }
}

#[test]
fn fields_limit_what_is_sent_and_max_rate_keeps_the_newest() {
    let (_fleet, o, opts, group) = fleet_with_decimated(2);
    // A name the schema does not have is refused before the upgrade.
    let (status, body) = connect_with(
        o.port,
        "/api/v1/channels/live/live?fields=counter,nope",
        None,
    )
    .unwrap_err();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("nope"), "{body}");
    let (status, body) =
        connect_with(o.port, "/api/v1/channels/live/live?max_rate=0", None).unwrap_err();
    assert_eq!(status, 400, "{body}");

    let mut picked = connect(
        &o,
        "/api/v1/channels/live/live?fields=counter,time&max_rate=100000",
    );
    let mut slow = connect(&o, "/api/v1/channels/live/live?max_rate=5");
    let rx = GroupReceiver::join(group);
    // 1,000 records a second for 2 s: 500 a second on the group.
    let start = Instant::now();
    Sender::new(opts.bind).send_paced(&example_records(2_000, "rate"), 1);
    let sending = start.elapsed();
    let (mut a, mut b) = (Got::default(), Got::default());
    a.read_until(&mut picked, 1_000, Duration::from_secs(20));
    b.read(&mut slow);
    std::thread::sleep(Duration::from_millis(500));
    b.read(&mut slow);
    let sent = decode(&rx.finish());
    assert_eq!(sent.len(), 1_000);

    assert_eq!(a.records.len(), sent.len());
    for (i, (r, j)) in sent.iter().zip(&a.records).enumerate() {
        let keys: Vec<&String> = j.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["counter", "time"], "#{i}: {j}");
        assert_same(&[r[2].clone(), r[0].clone()], j, i);
    }

    // At most 5 a second (and one more to start with), over what the
    // sending took and the wait after it.
    let window = sending.as_secs_f64() + 0.5;
    let most = (5.0 * window).ceil() as usize + 1;
    assert!(
        (5..=most).contains(&b.records.len()),
        "max_rate=5 over {window:.1} s: {} records",
        b.records.len()
    );
    assert_eq!(b.dropped, 0, "records skipped for the rate are not drops");
    // The newest wins: the last record sent is the last one received.
    let last = |r: &Json| r["counter"].as_i64().unwrap();
    let last_sent = match &sent.last().unwrap()[2].1 {
        Value::Int(n) => i64::from(*n),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        last(b.records.last().unwrap()),
        last_sent,
        "{:?}",
        b.records
    );
    // And they come in order.
    assert!(b.records.windows(2).all(|w| last(&w[0]) < last(&w[1])));
}

#[test]
fn a_client_that_never_reads_does_not_delay_another() {
    let (_fleet, o, opts, group) = fleet_with_decimated(2);
    // A small receive window: its socket is full after a few records.
    let mut stalled = connect_with(
        o.port,
        "/api/v1/channels/live/live?max_rate=100000",
        Some(4096),
    )
    .unwrap();
    let mut reader = connect(&o, "/api/v1/channels/live/live?max_rate=100000");
    let rx = GroupReceiver::join(group);
    let reading = std::thread::spawn(move || {
        let mut got = Got::default();
        got.read_until(&mut reader, 4_000, Duration::from_secs(40));
        got
    });
    // 2 KB records, 1,000 a second on the group for 4 s: 8 MB of JSON,
    // far more than the stalled client's socket buffers hold.
    let message = "x".repeat(2_000);
    let data = example_records(8_000, &message);
    let start = Instant::now();
    Sender::new(opts.bind).send_paced(&data, 2);
    let sent_at = Instant::now();
    let got = reading.join().unwrap();
    let sent = rx.finish();
    assert_eq!(sent.len(), 4_000);
    assert_eq!(
        got.records.len(),
        sent.len(),
        "the reading client got every record"
    );
    assert_eq!(got.dropped, 0);
    let late = got.at.last().unwrap().saturating_duration_since(sent_at);
    assert!(
        late < Duration::from_secs(2),
        "the last record reached the reading client {late:?} after it was sent (sending took {:?})",
        sent_at - start
    );
    let sent = decode(&sent);
    for (i, (a, j)) in sent.iter().zip(&got.records).enumerate() {
        assert_same(a, j, i);
    }

    // The stalled client lost records, and is told how many: what it got
    // and what it was told it lost add up to what was sent.
    let mut st = Got::default();
    let end = Instant::now() + Duration::from_secs(20);
    while st.records.len() + (st.dropped as usize) < sent.len() && Instant::now() < end {
        if !st.read(&mut stalled) {
            break;
        }
    }
    assert!(st.dropped > 0, "the stalled client lost nothing?");
    assert_eq!(st.records.len() + st.dropped as usize, sent.len());
    // What it got are records as sent, in order.
    let counter = |r: &Json| r["counter"].as_i64().unwrap();
    assert!(st
        .records
        .windows(2)
        .all(|w| counter(&w[0]) < counter(&w[1])));
    let last_sent = match &sent.last().unwrap()[2].1 {
        Value::Int(n) => i64::from(*n),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        counter(st.records.last().unwrap()),
        last_sent,
        "the newest is kept"
    );
    // The API answers meanwhile.
    assert_eq!(o.get("/healthz").status, 200);
}

#[test]
fn sixty_four_clients_and_the_sixty_fifth_is_refused() {
    let (_fleet, o, opts, _group) = fleet_with_decimated(1);
    let mut clients: Vec<Ws> = (0..64)
        .map(|_| connect(&o, "/api/v1/channels/live/live?max_rate=1000"))
        .collect();
    let (status, body) = connect_with(o.port, "/api/v1/channels/live/live", None).unwrap_err();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("64"), "{body}");
    // Every client is served.
    Sender::new(opts.bind).send_paced(&example_records(10, "all"), 1);
    for (i, ws) in clients.iter_mut().enumerate() {
        let mut g = Got::default();
        g.read_until(ws, 10, Duration::from_secs(10));
        assert_eq!(g.records.len(), 10, "client {i}");
    }
    // A client that leaves makes room.
    clients.pop().unwrap().close(None).unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let mut again = loop {
        match connect_with(o.port, "/api/v1/channels/live/live", None) {
            Ok(ws) => break ws,
            Err((503, _)) if Instant::now() < end => std::thread::sleep(Duration::from_millis(50)),
            Err((status, body)) => panic!("{status}: {body}"),
        }
    };
    Sender::new(opts.bind).send_paced(&example_records_from(10, 1, "again"), 1);
    let mut g = Got::default();
    g.read_until(&mut again, 1, Duration::from_secs(10));
    assert_eq!(g.records[0]["counter"], 10);
    // The last client gone, the orchestrator leaves the group.
    drop(again);
    drop(clients);
    let end = Instant::now() + Duration::from_secs(10);
    while !o.log().contains("left the decimated group") {
        assert!(Instant::now() < end, "the group was not left:\n{}", o.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(o.log().matches("joined the decimated group").count(), 1);
}

/// Opens the live stream at `path`, which must answer one `{"error": ...}`
/// message and close; the error.
fn error_then_close(o: &Orchestrator, path: &str) -> String {
    let mut ws = connect(o, path);
    let end = Instant::now() + Duration::from_secs(10);
    let first = loop {
        match ws.read() {
            Ok(Message::Text(t)) => break serde_json::from_str::<Json>(t.as_str()).unwrap(),
            Ok(other) => panic!("{other:?}"),
            Err(tungstenite::Error::Io(_)) if Instant::now() < end => continue,
            Err(e) => panic!("{e}"),
        }
    };
    let error = first["error"].as_str().unwrap_or_else(|| panic!("{first}"));
    assert_eq!(first.as_object().unwrap().len(), 1);
    loop {
        match ws.read() {
            Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => break,
            Err(tungstenite::Error::Io(_)) if Instant::now() < end => continue,
            other => panic!("expected a close, got {other:?}"),
        }
    }
    error.to_string()
}

#[test]
fn a_channel_without_a_decimated_output_says_so_and_closes() {
    let fleet = FleetDir::new(&[]);
    fleet.add(&ChannelOpts::unicast("plain"));
    let o = fleet.start();
    o.wait_ready("plain");
    let (status, body) = connect_with(o.port, "/api/v1/channels/nope/live", None).unwrap_err();
    assert_eq!(status, 404, "{body}");
    let error = error_then_close(&o, "/api/v1/channels/plain/live");
    assert!(error.contains("no decimated output"), "{error}");
}

#[test]
fn a_shared_decimated_group_is_not_watched_and_says_why() {
    // Channels on a shared group (decimated.shared, as SpeedData's imported
    // channels are) all send there: the live view cannot tell them apart.
    let fleet = FleetDir::new(&[]);
    let group = group_addr(unique_group(), free_port());
    for name in ["shared-a", "shared-b"] {
        let mut opts = ChannelOpts::unicast(name);
        opts.decimated = Some((group, 5));
        opts.decimation = Some("algorithm = \"downsample\"\nfactor = 5\nshared = true".into());
        fleet.add(&opts);
    }
    let o = fleet.start();
    o.wait_ready("shared-a");
    o.wait_ready("shared-b");
    let error = error_then_close(&o, "/api/v1/channels/shared-b/live");
    assert!(
        error.contains(&format!(
            "decimated output {group} is shared with other channels"
        )),
        "{error}"
    );
}
