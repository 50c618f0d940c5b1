//! The Prometheus endpoint: the figures of the last sample window per (host, GPU, pid, rank),
//! sums over every window, and the service's own health, in the text exposition format
//! (version 0.0.4), served by a small HTTP/1.1 server on one thread: `GET /metrics` only,
//! requests capped at [`MAX_REQUEST_BYTES`], 2 s timeouts, one connection at a time.
//! Names and help: docs/metrics-exporter.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::window::{DeviceFigures, WindowFigures};
use crate::analyze::Category;

/// The longest request accepted (headers included); a longer one gets 431 and is closed.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Read and write timeout of a connection.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Processes with figures kept at most (labels are bounded even on a host that runs
/// thousands of CUDA processes at once): the rest are counted, not exported.
pub const MAX_EXPORTED_PROCESSES: usize = 1024;

/// The `reason` label values of `ghostprof_inject_refusals_total` (each served, 0 until it
/// happens): why a followed process got no live injection at a sample window.
pub const INJECT_REFUSAL_REASONS: [&str; 10] = [
    "not_x86_64",
    "no_cuda",
    "traced",
    "ptrace_denied",
    "no_dlopen",
    "no_safe_moment",
    "library",
    "failed",
    "library_refused",
    "cupti_held",
];

/// The figures of one device, kept from window to window while its process lives.
#[derive(Debug, Clone)]
struct DeviceRow {
    last: DeviceFigures,
    /// Sums over every sample window, ns.
    window_ns: u64,
    busy_ns: u64,
    categories: [u64; 8],
}

/// Everything the endpoint serves.
#[derive(Debug, Default)]
pub struct State {
    /// This host's name (the `host` label).
    pub host: String,
    devices: BTreeMap<(u32, u32), DeviceRow>,
    straggler_rank: Option<u32>,
    /// Sample windows analyzed.
    pub windows: u64,
    /// Sum of the sample windows' lengths, seconds, and of the time watched.
    pub sampled_seconds: f64,
    /// See `sampled_seconds`.
    pub watched_seconds: f64,
    /// Records lost, per (source, cause), cumulative.
    pub drops: BTreeMap<(String, String), u64>,
    /// The service's own CPU time (user + system, every thread), seconds.
    pub cpu_seconds: f64,
    /// Its share of one CPU over the last second.
    pub cpu_ratio: f64,
    /// Its resident memory, bytes.
    pub resident_bytes: u64,
    /// Bytes the flight recorder's files hold.
    pub disk_bytes: u64,
    /// Recording paused (disk full).
    pub paused: bool,
    /// Trace files written by triggers, per reason kind.
    pub triggers: BTreeMap<String, u64>,
    /// Processes followed now.
    pub followed: usize,
    /// Processes left out of the figures by [`MAX_EXPORTED_PROCESSES`].
    pub not_exported: u64,
    /// Live injections refused, per reason (of [`INJECT_REFUSAL_REASONS`]).
    pub inject_refusals: BTreeMap<String, u64>,
    /// Attach sessions started by live injection (one per process per sample window).
    pub inject_sessions: u64,
    /// Trigger socket connections refused because the peer was not root.
    pub trigger_socket_refusals: u64,
}

impl State {
    /// An empty state for `host`.
    pub fn new(host: String) -> Self {
        State { host, ..Default::default() }
    }

    /// Takes a window's figures: each device's last values are replaced, its sums grow.
    pub fn add_window(&mut self, w: &WindowFigures) {
        self.windows += 1;
        for d in &w.devices {
            let key = (d.pid, d.device);
            if !self.devices.contains_key(&key)
                && self.devices.keys().map(|k| k.0).collect::<std::collections::BTreeSet<_>>().len()
                    >= MAX_EXPORTED_PROCESSES
            {
                self.not_exported += 1;
                continue;
            }
            let row = self.devices.entry(key).or_insert_with(|| DeviceRow {
                last: d.clone(),
                window_ns: 0,
                busy_ns: 0,
                categories: [0; 8],
            });
            row.last = d.clone();
            row.window_ns += d.window_ns;
            row.busy_ns += d.busy_ns;
            for (sum, ns) in row.categories.iter_mut().zip(d.categories.ns) {
                *sum += ns;
            }
        }
        self.straggler_rank = w.straggler.map(|s| s.1);
    }

    /// Drops the rows of processes that are gone (their labels leave the endpoint).
    pub fn retain_pids(&mut self, alive: &dyn Fn(u32) -> bool) {
        self.devices.retain(|k, _| alive(k.0));
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        let host = escape_label(&self.host);
        let labels = |r: &DeviceRow| {
            format!(
                "host=\"{host}\",gpu=\"{}\",pid=\"{}\",rank=\"{}\"",
                r.last.device,
                r.last.pid,
                r.last.rank.map_or_else(|| "none".to_string(), |x| x.to_string())
            )
        };
        let family = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            &mut o,
            "ghostprof_gpu_busy_ratio",
            "gauge",
            "Fraction of the last sample window the GPU ran work (what dashboards call utilization).",
        );
        for r in self.devices.values() {
            let _ = writeln!(o, "ghostprof_gpu_busy_ratio{{{}}} {}", labels(r), num(r.last.busy()));
        }
        family(
            &mut o,
            "ghostprof_gpu_mfu_ratio",
            "gauge",
            "Useful (FLOP-equivalent) fraction of the last sample window; absent without a FLOP source.",
        );
        for r in self.devices.values() {
            if let Some(m) = r.last.mfu() {
                let _ = writeln!(o, "ghostprof_gpu_mfu_ratio{{{}}} {}", labels(r), num(m));
            }
        }
        family(
            &mut o,
            "ghostprof_gpu_category_ratio",
            "gauge",
            "Fraction of the last sample window in each of the eight categories (they sum to 1).",
        );
        for r in self.devices.values() {
            for c in Category::ALL {
                let _ = writeln!(
                    o,
                    "ghostprof_gpu_category_ratio{{{},category=\"{}\"}} {}",
                    labels(r),
                    c.name(),
                    num(r.last.ratio(c))
                );
            }
        }
        family(&mut o, "ghostprof_gpu_category_sampled_seconds_total", "counter", "Seconds in each category summed over every sample window of the process (divide by ghostprof_gpu_sampled_seconds_total for the run's fractions).");
        for r in self.devices.values() {
            for c in Category::ALL {
                let _ = writeln!(
                    o,
                    "ghostprof_gpu_category_sampled_seconds_total{{{},category=\"{}\"}} {}",
                    labels(r),
                    c.name(),
                    num(r.categories[c as usize] as f64 / 1e9)
                );
            }
        }
        family(
            &mut o,
            "ghostprof_gpu_sampled_seconds_total",
            "counter",
            "Seconds of device timeline analyzed for the process (the sample windows' lengths).",
        );
        for r in self.devices.values() {
            let _ =
                writeln!(o, "ghostprof_gpu_sampled_seconds_total{{{}}} {}", labels(r), num(r.window_ns as f64 / 1e9));
        }
        family(
            &mut o,
            "ghostprof_gpu_busy_sampled_seconds_total",
            "counter",
            "Busy seconds summed over the sample windows of the process.",
        );
        for r in self.devices.values() {
            let _ = writeln!(
                o,
                "ghostprof_gpu_busy_sampled_seconds_total{{{}}} {}",
                labels(r),
                num(r.busy_ns as f64 / 1e9)
            );
        }
        family(
            &mut o,
            "ghostprof_straggler_rank",
            "gauge",
            "NCCL rank the other ranks waited for most in the last sample window; -1 when none.",
        );
        let _ =
            writeln!(o, "ghostprof_straggler_rank{{host=\"{host}\"}} {}", self.straggler_rank.map_or(-1, |r| r as i64));
        family(
            &mut o,
            "ghostprof_sample_windows_total",
            "counter",
            "Sample windows (CUPTI on) analyzed; the figures are sampled, not exact.",
        );
        let _ = writeln!(o, "ghostprof_sample_windows_total{{host=\"{host}\"}} {}", self.windows);
        family(
            &mut o,
            "ghostprof_sample_fraction_ratio",
            "gauge",
            "Share of the time watched that the device timeline was sampled.",
        );
        let _ = writeln!(
            o,
            "ghostprof_sample_fraction_ratio{{host=\"{host}\"}} {}",
            num(self.sampled_seconds / self.watched_seconds.max(1e-9))
        );
        family(&mut o, "ghostprof_dropped_records_total", "counter", "Records lost, by collector source and cause.");
        for ((source, cause), n) in &self.drops {
            let _ = writeln!(
                o,
                "ghostprof_dropped_records_total{{host=\"{host}\",source=\"{source}\",cause=\"{cause}\"}} {n}"
            );
        }
        family(
            &mut o,
            "ghostprof_watch_cpu_seconds_total",
            "counter",
            "CPU time of the watch service itself (user + system, all threads).",
        );
        let _ = writeln!(o, "ghostprof_watch_cpu_seconds_total{{host=\"{host}\"}} {}", num(self.cpu_seconds));
        family(&mut o, "ghostprof_watch_cpu_ratio", "gauge", "CPU of the watch service over the last second, in CPUs.");
        let _ = writeln!(o, "ghostprof_watch_cpu_ratio{{host=\"{host}\"}} {}", num(self.cpu_ratio));
        family(&mut o, "ghostprof_watch_resident_memory_bytes", "gauge", "Resident memory of the watch service.");
        let _ = writeln!(o, "ghostprof_watch_resident_memory_bytes{{host=\"{host}\"}} {}", self.resident_bytes);
        family(
            &mut o,
            "ghostprof_recorder_disk_bytes",
            "gauge",
            "Bytes the flight recorder's files hold (capped by --max-disk).",
        );
        let _ = writeln!(o, "ghostprof_recorder_disk_bytes{{host=\"{host}\"}} {}", self.disk_bytes);
        family(&mut o, "ghostprof_recorder_paused", "gauge", "1 while recording is paused for lack of disk space.");
        let _ = writeln!(o, "ghostprof_recorder_paused{{host=\"{host}\"}} {}", u8::from(self.paused));
        family(&mut o, "ghostprof_triggers_total", "counter", "Trigger traces written, by reason.");
        for (reason, n) in &self.triggers {
            let _ = writeln!(o, "ghostprof_triggers_total{{host=\"{host}\",reason=\"{}\"}} {n}", escape_label(reason));
        }
        family(&mut o, "ghostprof_processes_followed", "gauge", "CUDA processes followed now.");
        let _ = writeln!(o, "ghostprof_processes_followed{{host=\"{host}\"}} {}", self.followed);
        family(
            &mut o,
            "ghostprof_trigger_socket_refusals_total",
            "counter",
            "Connections to the trigger socket refused because the peer was not root.",
        );
        let _ =
            writeln!(o, "ghostprof_trigger_socket_refusals_total{{host=\"{host}\"}} {}", self.trigger_socket_refusals);
        family(
            &mut o,
            "ghostprof_inject_sessions_total",
            "counter",
            "CUPTI sessions started by live injection into processes run without the library (one per process per sample window).",
        );
        let _ = writeln!(o, "ghostprof_inject_sessions_total{{host=\"{host}\"}} {}", self.inject_sessions);
        family(
            &mut o,
            "ghostprof_inject_refusals_total",
            "counter",
            "Live injections refused (the process is followed with eBPF only), by reason.",
        );
        for reason in INJECT_REFUSAL_REASONS {
            let n = self.inject_refusals.get(reason).copied().unwrap_or(0);
            let _ = writeln!(o, "ghostprof_inject_refusals_total{{host=\"{host}\",reason=\"{reason}\"}} {n}");
        }
        o
    }
}

/// A float as Prometheus reads it (no exponent surprises, NaN spelled out).
fn num(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else {
        format!("{x}")
    }
}

/// A label value escaped as the exposition format requires (backslash, quote, newline).
pub fn escape_label(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

/// The running endpoint.
pub struct Exporter {
    /// Where it listens (the port chosen when 0 was given).
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Exporter {
    /// Binds `addr` and serves `state` on one thread.
    pub fn start(addr: SocketAddr, state: Arc<Mutex<State>>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new().name("ghostprof-metrics".into()).spawn(move || {
            while !s.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        // A panic here would only end the endpoint; never the service.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(stream, &state)));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        })?;
        Ok(Exporter { addr, stop, thread: Some(thread) })
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one request on `stream` and closes it.
fn serve(mut stream: TcpStream, state: &Mutex<State>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let complete = loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break true;
        }
        if buf.len() > MAX_REQUEST_BYTES {
            break false;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let (status, body) = if !complete {
        ("431 Request Header Fields Too Large", String::from("request too large\n"))
    } else {
        let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        let mut parts = line.trim_end().split(' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("GET"), Some("/metrics"), Some(v)) if v.starts_with("HTTP/1.") => {
                let body = state.lock().unwrap_or_else(|p| p.into_inner()).render();
                ("200 OK", body)
            }
            (Some("GET"), Some(_), Some(v)) if v.starts_with("HTTP/1.") => ("404 Not Found", "only /metrics\n".into()),
            (Some(_), Some(_), Some(v)) if v.starts_with("HTTP/1.") => {
                ("405 Method Not Allowed", "only GET /metrics\n".into())
            }
            _ => ("400 Bad Request", "bad request\n".into()),
        }
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(body.as_bytes()));
}

/// The service's own CPU seconds (user + system of every thread, from /proc/self/stat) and
/// resident bytes (/proc/self/statm).
pub fn own_usage() -> (f64, u64) {
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let cpu = stat
        .rfind(')')
        .map(|i| {
            // Fields after "(comm)": state is the 3rd field of the line, utime the 14th.
            let f: Vec<&str> = stat[i + 1..].split_whitespace().collect();
            let g = |n: usize| f.get(n).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
            (g(11) + g(12)) / tick
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|x| x.parse::<u64>().ok()))
        .unwrap_or(0);
    (cpu, rss * page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_other_than_get_metrics_are_refused_and_size_is_capped() {
        let state = Arc::new(Mutex::new(State::new("h\"1".into())));
        let ex = Exporter::start("127.0.0.1:0".parse().unwrap(), state).unwrap();
        let ask = |req: &[u8]| {
            let mut s = TcpStream::connect(ex.addr).unwrap();
            let _ = s.write_all(req);
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        };
        let ok = ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.contains("ghostprof_processes_followed{host=\"h\\\"1\"} 0"), "{ok}");
        assert!(ask(b"GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(ask(b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(ask(b"hello\r\n\r\n").starts_with("HTTP/1.1 400"));
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_REQUEST_BYTES + 10));
        assert!(ask(&big).starts_with("HTTP/1.1 431"));
    }

    #[test]
    fn own_cpu_grows_with_work() {
        let cpu = || {
            let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: clock_gettime fills the struct we pass.
            unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
            ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
        };
        let (a, rss) = own_usage();
        let start = cpu();
        let mut x = 0u64;
        // 300 ms of this process's CPU (not of the clock: the machine may be loaded).
        while cpu() - start < 0.3 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let (b, _) = own_usage();
        assert!(b - a >= 0.25, "300 ms of CPU shows in /proc/self/stat: {a} → {b}");
        assert!(rss > 1 << 20);
    }
}
