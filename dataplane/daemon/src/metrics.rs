//! Prometheus metrics: collectors that read reactor and bdev state at scrape time, and a
//! small HTTP/1.1 responder serving them at `/metrics` in the OpenMetrics text format.
//!
//! Modules add their own collectors through [`crate::Module::register_metrics`].

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use gyre_bdev::stats::{latency_bucket_upper_ns, OpKind, LATENCY_BUCKETS};
use gyre_bdev::{BdevRegistry, IoStatsSnapshot};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::context::{DaemonContext, ShutdownFlag};

/// A counter family: name, help, and how to read its value.
type Family<T, V> = (&'static str, &'static str, fn(&T) -> V);

/// Per-reactor load: busy fraction since start, busy and idle time, iterations, sleeps.
#[derive(Clone)]
pub struct ReactorCollector {
    ctx: DaemonContext,
}

impl std::fmt::Debug for ReactorCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReactorCollector")
    }
}

impl ReactorCollector {
    pub fn new(ctx: DaemonContext) -> Self {
        ReactorCollector { ctx }
    }
}

impl Collector for ReactorCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rows: Vec<([(&str, String); 2], gyre_reactor::ReactorLoad)> = self
            .ctx
            .reactors()
            .iter()
            .map(|r| {
                (
                    [
                        ("reactor", r.index().to_string()),
                        ("core", r.core().to_string()),
                    ],
                    r.load(),
                )
            })
            .collect();
        {
            let mut m = enc.encode_descriptor(
                "gyre_reactor_busy_ratio",
                "Share of time in iterations that did work, since start",
                None,
                MetricType::Gauge,
            )?;
            for (labels, l) in &rows {
                ConstGauge::new(l.busy_fraction()).encode(m.encode_family(labels)?)?;
            }
        }
        let counters: [Family<gyre_reactor::ReactorLoad, f64>; 4] = [
            (
                "gyre_reactor_busy_seconds",
                "Time in iterations that did work",
                |l| l.busy_ns as f64 / 1e9,
            ),
            (
                "gyre_reactor_idle_seconds",
                "Time in iterations that found nothing to do, and asleep",
                |l| l.idle_ns as f64 / 1e9,
            ),
            ("gyre_reactor_iterations", "Loop iterations", |l| {
                l.iterations as f64
            }),
            (
                "gyre_reactor_sleeps",
                "Times the reactor went to sleep (hybrid idle mode)",
                |l| l.sleeps as f64,
            ),
        ];
        for (name, help, get) in counters {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, l) in &rows {
                ConstCounter::new(get(l)).encode(m.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

/// Per-bdev I/O: ops, bytes and errors per kind of operation, and latency histograms.
#[derive(Clone)]
pub struct BdevCollector {
    registry: BdevRegistry,
}

impl std::fmt::Debug for BdevCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BdevCollector")
    }
}

impl BdevCollector {
    pub fn new(registry: BdevRegistry) -> Self {
        BdevCollector { registry }
    }
}

impl Collector for BdevCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let bdevs: Vec<(String, u64, IoStatsSnapshot)> = self
            .registry
            .list()
            .into_iter()
            .filter_map(|s| {
                let b = self.registry.get(&s.name)?;
                let stats = b.info().io_stats();
                Some((s.name, s.num_blocks * s.block_size as u64, stats))
            })
            .collect();
        {
            let mut m = enc.encode_descriptor(
                "gyre_bdev_size_bytes",
                "Size of the bdev",
                None,
                MetricType::Gauge,
            )?;
            for (name, size, _) in &bdevs {
                let labels = [("bdev", name.as_str())];
                ConstGauge::new(*size as i64).encode(m.encode_family(&labels)?)?;
            }
        }
        let counters: [Family<gyre_bdev::KindStats, u64>; 3] = [
            ("gyre_bdev_ops", "Requests completed successfully", |k| {
                k.ops
            }),
            (
                "gyre_bdev_bytes",
                "Bytes read or written by successful requests",
                |k| k.bytes,
            ),
            (
                "gyre_bdev_errors",
                "Requests completed with an error",
                |k| k.errors,
            ),
        ];
        for (metric, help, get) in counters {
            let mut m = enc.encode_descriptor(metric, help, None, MetricType::Counter)?;
            for (name, _, s) in &bdevs {
                for kind in OpKind::ALL {
                    let labels = [("bdev", name.as_str()), ("op", kind.name())];
                    ConstCounter::new(get(s.kind(kind))).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        let mut m = enc.encode_descriptor(
            "gyre_bdev_latency_seconds",
            "Latency of successful requests, from submission to completion",
            None,
            MetricType::Histogram,
        )?;
        for (name, _, s) in &bdevs {
            for kind in OpKind::ALL {
                let k = s.kind(kind);
                let buckets: Vec<(f64, u64)> = (0..LATENCY_BUCKETS)
                    .map(|i| {
                        let le = latency_bucket_upper_ns(i).map_or(f64::MAX, |ns| ns as f64 / 1e9);
                        (le, k.latency_buckets[i])
                    })
                    .collect();
                let labels = [("bdev", name.as_str()), ("op", kind.name())];
                m.encode_family(&labels)?.encode_histogram::<()>(
                    k.latency_sum_ns as f64 / 1e9,
                    k.ops,
                    &buckets,
                    None,
                )?;
            }
        }
        Ok(())
    }
}

/// Renders every metric of `registry` as OpenMetrics text.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out = "# EOF\n".into();
    }
    out
}

/// The `/metrics` endpoint.
pub(crate) struct MetricsServer {
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl MetricsServer {
    pub(crate) fn start(
        addr: SocketAddr,
        registry: Registry,
        shutdown: Arc<ShutdownFlag>,
    ) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(listener, registry, &shutdown))?;
        Ok(MetricsServer {
            thread: Some(thread),
            addr,
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits for the thread to notice shutdown (the flag must be set).
    pub(crate) fn stop(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: TcpListener, registry: Registry, shutdown: &ShutdownFlag) {
    while !shutdown.is_set() {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = answer(stream, &registry) {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                shutdown.wait_timeout(Duration::from_millis(100));
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                shutdown.wait_timeout(Duration::from_millis(100));
            }
        }
    }
}

/// Answers one HTTP request: GET /metrics, or an error status. One request per connection.
fn answer(mut stream: TcpStream, registry: &Registry) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > 8192 {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"",
            );
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            let body = render(registry);
            respond(
                &mut stream,
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                body.as_bytes(),
            )
        }
        ("GET", _) => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            b"try /metrics\n",
        ),
        _ => respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
        ),
    }
}

fn respond(stream: &mut TcpStream, status: &str, ctype: &str, body: &[u8]) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}
