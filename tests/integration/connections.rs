//! Slow, idle and oversized clients against the exporter's HTTP server
//! (DESIGN §7, issue "Reliability and security"): the header-read and
//! body-read timeouts close them, the connection cap (derived from the
//! file-descriptor limit) closes the longest-idle ones so `/metrics` keeps
//! answering, a client that writes a whole oversized body before reading
//! still gets its 413, and graceful shutdown lets a request in flight finish.
//!
//! The file-descriptor tests run the real binary under `prlimit`, so the
//! limit is the process's own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use okr_exporter::config::{Secret, Settings};
use okr_exporter::serve::{ServeOptions, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use uuid::Uuid;

use crate::support::{eventually, exporter_bin, prepared_db, start_exporter};

const TOKEN: &str = "connections-ingest-token";

/// How a test client holds its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Connects and sends nothing.
    Idle,
    /// Sends a request line, then one header line every 300 ms, never the
    /// blank line that ends the headers.
    SlowHeader,
    /// Sends complete ingestion headers announcing a 1000-byte body, then
    /// one byte of it every 300 ms.
    SlowBody,
    /// Sends one complete keep-alive request, reads the answer, then idles.
    KeepAliveIdle,
}

/// What became of a held connection.
#[derive(Debug)]
struct Held {
    hold: Hold,
    /// How long after it was opened the server closed it; `None` if it was
    /// still open when the client gave up.
    closed_after: Option<Duration>,
    /// Everything the server sent.
    received: String,
}

/// Holds `stream` as `hold` says until the server closes it or `give_up`
/// passes.
async fn hold(mut stream: TcpStream, hold: Hold, give_up: Duration) -> Held {
    let opened = Instant::now();
    let first: Vec<u8> = match hold {
        Hold::Idle => Vec::new(),
        Hold::SlowHeader => b"GET /metrics HTTP/1.1\r\nHost: exporter\r\n".to_vec(),
        Hold::SlowBody => format!(
            "POST /api/okr/creation-time HTTP/1.1\r\nHost: exporter\r\n\
             Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n\
             Content-Length: 1000\r\n\r\n{{"
        )
        .into_bytes(),
        Hold::KeepAliveIdle => b"GET /healthz HTTP/1.1\r\nHost: exporter\r\n\r\n".to_vec(),
    };
    let mut writable = stream.write_all(&first).await.is_ok();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    let mut tick = tokio::time::interval_at(
        opened + Duration::from_millis(300),
        Duration::from_millis(300),
    );
    let give_up_at = opened + give_up;
    let closed_after = loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break Some(opened.elapsed()),
                Ok(n) => received.extend_from_slice(&buf[..n]),
            },
            _ = tick.tick(), if writable => {
                let more: &[u8] = match hold {
                    Hold::SlowHeader => b"X-Slow: 1\r\n",
                    Hold::SlowBody => b" ",
                    Hold::Idle | Hold::KeepAliveIdle => continue,
                };
                writable = stream.write_all(more).await.is_ok();
            }
            () = tokio::time::sleep_until(give_up_at) => break None,
        }
    };
    Held {
        hold,
        closed_after,
        received: String::from_utf8_lossy(&received).into_owned(),
    }
}

/// Connects `n` clients holding their connections as `how`, in order.
async fn open(addr: SocketAddr, how: Hold, n: usize, give_up: Duration) -> Vec<JoinHandle<Held>> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let stream = TcpStream::connect(addr).await.expect("connect");
        held.push(tokio::spawn(hold(stream, how, give_up)));
    }
    held
}

/// GET `/metrics` on a new connection; panics unless it answers 200 within
/// `within`. Returns how long it took.
async fn metrics_answers(base: &str, within: Duration) -> Duration {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(within)
        .build()
        .expect("client");
    let started = Instant::now();
    let resp = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("/metrics did not answer within {within:?}: {e}"));
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.expect("body");
    assert!(body.contains("okr_exporter_build_info"), "{body}");
    started.elapsed()
}

/// The exporter binary under a lowered file-descriptor limit, killed when
/// dropped.
struct LimitedExporter {
    child: Child,
    addr: SocketAddr,
    base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl LimitedExporter {
    async fn start(database_url: &str, nofile: u32, extra: &[&str]) -> Self {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            l.local_addr().expect("addr")
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("exporter.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = Command::new("prlimit")
            .arg(format!("--nofile={nofile}:{nofile}"))
            .arg("--")
            .arg(exporter_bin())
            .args([
                "serve",
                "--listen",
                &addr.to_string(),
                "--log-format",
                "json",
            ])
            .args(["--collect-interval", "1h"])
            .args(extra)
            .env("DATABASE_URL", database_url)
            .env("OKR_INGEST_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("run prlimit (util-linux) with the exporter");
        let base = format!("http://{addr}");
        let me = Self {
            child,
            addr,
            base,
            log,
            _dir: dir,
        };
        let health = format!("{}/healthz", me.base);
        let up = eventually(Duration::from_secs(20), || async {
            reqwest::get(&health)
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(up, "exporter did not start:\n{}", me.log());
        me
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LimitedExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Awaits every handle.
async fn outcomes(handles: Vec<JoinHandle<Held>>) -> Vec<Held> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("client task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_answers_while_slow_and_idle_clients_exceed_the_fd_derived_cap() {
    let db = prepared_db().await;
    let ex = LimitedExporter::start(
        &db.url,
        256,
        &[
            "--http-header-read-timeout",
            "5s",
            "--http-body-read-timeout",
            "3s",
        ],
    )
    .await;
    // The header-read timeout is longer than the body's so that eviction
    // (at once) and that timeout stay apart even on a busy machine.
    // 256 descriptors less the reserve of 64.
    let cap = 192;
    assert!(
        ex.log().contains(&format!("\"max_connections\":{cap}")),
        "{}",
        ex.log()
    );
    let give_up = Duration::from_secs(20);
    // Busy ones first (never evicted), then more idle ones than the cap and
    // the descriptor limit allow.
    let slow_body = open(ex.addr, Hold::SlowBody, 10, give_up).await;
    let slow_header = open(ex.addr, Hold::SlowHeader, 50, give_up).await;
    let idle = open(ex.addr, Hold::Idle, 300, give_up).await;
    let opened = Instant::now();
    for _ in 0..3 {
        let took = metrics_answers(&ex.base, Duration::from_secs(2)).await;
        assert!(took < Duration::from_secs(2), "/metrics took {took:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        opened.elapsed() < Duration::from_secs(5),
        "the probes ran after the header-read timeout"
    );

    let slow_body = outcomes(slow_body).await;
    let others: Vec<Held> = outcomes(slow_header)
        .await
        .into_iter()
        .chain(outcomes(idle).await)
        .collect();
    // Waiting for headers: closed by eviction (at once) or by the 5 s
    // header-read timeout, never left open.
    for h in &others {
        let after = h
            .closed_after
            .unwrap_or_else(|| panic!("{h:?} never closed"));
        assert!(after < Duration::from_secs(8), "{h:?}");
        assert!(h.received.is_empty(), "{h:?}");
    }
    let evicted = others
        .iter()
        .filter(|h| h.closed_after.is_some_and(|d| d < Duration::from_secs(4)))
        .count();
    assert!(
        evicted >= 350 - cap,
        "only {evicted} connections closed before the header-read timeout"
    );
    // Requests in progress are never evicted: each slow body got its 408
    // from the 3 s body-read timeout, then the lingering close (at most 5 s)
    // ended.
    for h in &slow_body {
        assert!(h.received.starts_with("HTTP/1.1 408"), "{h:?}");
        assert!(h.received.contains(r#"{"error":"#), "{h:?}");
        let after = h
            .closed_after
            .unwrap_or_else(|| panic!("{h:?} never closed"));
        assert!(after < Duration::from_secs(11), "{h:?}");
    }
    let log = ex.log();
    assert!(log.contains("connection cap reached"), "{log}");
    assert!(!log.contains("Too many open files"), "{log}");
    metrics_answers(&ex.base, Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_closes_idle_connections_instead_of_starving_metrics() {
    let db = prepared_db().await;
    // A cap above what 256 descriptors allow: accept fails with EMFILE.
    let ex = LimitedExporter::start(&db.url, 256, &["--http-max-connections", "1000"]).await;
    let idle = open(ex.addr, Hold::Idle, 300, Duration::from_secs(15)).await;
    for _ in 0..3 {
        let took = metrics_answers(&ex.base, Duration::from_secs(2)).await;
        assert!(took < Duration::from_secs(2), "/metrics took {took:?}");
    }
    let log = ex.log();
    let reported = log.matches("cannot accept connections").count();
    assert_eq!(
        reported, 1,
        "accept errors are logged once per burst:\n{log}"
    );
    drop(ex);
    for h in outcomes(idle).await {
        assert!(h.closed_after.is_some(), "{h:?}");
    }
}

#[tokio::test]
async fn slow_header_idle_and_keep_alive_connections_close_within_the_header_read_timeout() {
    let db = prepared_db().await;
    let mut settings = Settings::for_database(Some(db.database_url()));
    settings.ingest_token = Some(Secret::new(TOKEN));
    settings.http.header_read_timeout = Duration::from_secs(1);
    settings.http.body_read_timeout = Duration::from_secs(1);
    let ex = start_exporter(settings).await;
    let addr: SocketAddr = ex.base.trim_start_matches("http://").parse().unwrap();
    let give_up = Duration::from_secs(10);
    let mut handles = Vec::new();
    for how in [
        Hold::Idle,
        Hold::SlowHeader,
        Hold::KeepAliveIdle,
        Hold::SlowBody,
    ] {
        handles.extend(open(addr, how, 3, give_up).await);
    }
    for h in outcomes(handles).await {
        let after = h
            .closed_after
            .unwrap_or_else(|| panic!("{h:?} never closed"));
        match h.hold {
            Hold::Idle | Hold::SlowHeader => {
                assert!(h.received.is_empty(), "{h:?}");
                assert!(after >= Duration::from_millis(900), "{h:?}");
                assert!(after < Duration::from_secs(3), "{h:?}");
            }
            Hold::KeepAliveIdle => {
                // Answered, then closed while idle between requests.
                assert!(h.received.starts_with("HTTP/1.1 200"), "{h:?}");
                assert!(h.received.ends_with("ok\n"), "{h:?}");
                assert!(after >= Duration::from_millis(900), "{h:?}");
                assert!(after < Duration::from_secs(3), "{h:?}");
            }
            Hold::SlowBody => {
                // 408 at 1 s, then a lingering close of at most 5 s while
                // the client keeps sending.
                assert!(h.received.starts_with("HTTP/1.1 408"), "{h:?}");
                assert!(h.received.contains(r#"{"error":"#), "{h:?}");
                assert!(after >= Duration::from_millis(900), "{h:?}");
                assert!(after < Duration::from_secs(8), "{h:?}");
            }
        }
    }
    let (status, _) = ex.get("/healthz").await;
    assert_eq!(status, 200);
    ex.stop().await;
}

#[tokio::test]
async fn an_oversized_body_written_before_reading_gets_its_413() {
    let db = prepared_db().await;
    let mut settings = Settings::for_database(Some(db.database_url()));
    settings.ingest_token = Some(Secret::new(TOKEN));
    let ex = start_exporter(settings).await;
    let addr: SocketAddr = ex.base.trim_start_matches("http://").parse().unwrap();
    let body_len = 4 * 1024 * 1024;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/okr/creation-time HTTP/1.1\r\nHost: exporter\r\n\
         Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n\
         Content-Length: {body_len}\r\n\r\n"
    );
    let mut request = head.into_bytes();
    request.extend(std::iter::repeat_n(b' ', body_len));
    // The whole request first, as a naive client does, then the answer.
    let exchange = async {
        stream
            .write_all(&request)
            .await
            .expect("write the whole body");
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .expect("read the answer");
        String::from_utf8_lossy(&answer).into_owned()
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("exchange finished");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains(r#"{"error":"request body too large"#),
        "{answer}"
    );
    ex.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_request_in_flight_and_closes_idle_connections() {
    let db = prepared_db().await;
    let followup = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO followups (id, creator_id, status, created_at, published_at) \
         VALUES ($1, 'c', 'published', now() - interval '2 days', now() - interval '1 hour')",
    )
    .bind(followup)
    .execute(&db.pool)
    .await
    .unwrap();
    let mut settings = Settings::for_database(Some(db.database_url()));
    settings.ingest_token = Some(Secret::new(TOKEN));
    let ex = start_exporter(settings).await;
    let addr: SocketAddr = ex.base.trim_start_matches("http://").parse().unwrap();

    // An idle keep-alive connection, and a request whose body is half sent.
    let idle = open(addr, Hold::KeepAliveIdle, 1, Duration::from_secs(10)).await;
    let body = format!(r#"{{"followup_id":"{followup}","duration_seconds":42.5}}"#);
    let (first, rest) = body.as_bytes().split_at(body.len() / 2);
    let mut in_flight = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/okr/creation-time HTTP/1.1\r\nHost: exporter\r\n\
         Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    in_flight.write_all(head.as_bytes()).await.unwrap();
    in_flight.write_all(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let shutdown_began = Instant::now();
    let stopping = tokio::spawn(ex.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // No new connections once shutdown began.
    assert!(TcpStream::connect(addr).await.is_err());
    // The idle connection was closed at once, not after a timeout.
    let idle = outcomes(idle).await.remove(0);
    assert!(idle.received.starts_with("HTTP/1.1 200"), "{idle:?}");
    assert!(
        idle.closed_after
            .is_some_and(|d| d < Duration::from_secs(2)),
        "{idle:?}"
    );
    assert!(!stopping.is_finished(), "stopped with a request in flight");

    in_flight.write_all(rest).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), in_flight.read_to_end(&mut answer))
        .await
        .expect("answered")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("the server stopped after the request")
        .unwrap();
    assert!(shutdown_began.elapsed() < Duration::from_secs(5));
    let (stored,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM okr_creation_time WHERE followup_id = $1")
            .bind(followup)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(stored, 1);
}

#[tokio::test]
async fn a_client_that_reads_nothing_is_dropped_after_the_send_timeout() {
    const BIG: usize = 64 * 1024 * 1024;
    let app = axum::Router::new().route("/big", axum::routing::get(|| async { vec![b'x'; BIG] }));
    let options = ServeOptions {
        send_timeout: Duration::from_secs(1),
        ..ServeOptions::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, app, options, async {
        let _ = stopped.await;
    }));

    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: exporter\r\n\r\n")
        .await
        .unwrap();
    // Read nothing for longer than the send timeout: the socket buffers
    // fill, the server's writes stall, and it gives up.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stalled connection was never dropped");
    assert!(got < BIG, "the whole response arrived ({got} bytes)");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stopped")
        .unwrap();
}
