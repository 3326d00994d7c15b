//! The node's live location: a client of gpsd's socket around `node_core::location`, which
//! decides everything (what a line says, which fixes to believe, when to report).
//!
//! [`spawn`] starts one task for the config's `location`:
//! - `source = "gpsd"`: connect to gpsd over TCP, send `?WATCH={"enable":true,"json":true};`,
//!   read its lines with a [`LineReader`] (a line over [`MAX_LINE_BYTES`] is thrown away
//!   through its newline and counted; the connection stays), and run each through
//!   [`parse_line`] → [`Filter`] → [`Reporter`]. No line for [`Tuning::stall_timeout`] while
//!   connected (gpsd sends a TPV a second while it has a receiver) ends the connection. A
//!   failed dial or a lost or stalled connection is dialled again after a full-jitter
//!   [`Backoff`] (250 ms doubling to 30 s), which starts over once a connection brings a TPV:
//!   a gpsd without a receiver, which says nothing, is dialled again every 10 to 40 s, not in
//!   a tight loop.
//! - a fixed `location`: the same [`Reporter`] with the point as its fallback and nothing to
//!   observe, so the consumer sees one cadence whatever the source: the point at once, then
//!   every `report_max_secs`.
//!
//! It publishes the current location on a `watch` channel (for the status endpoint) and each
//! report the reporter makes due on a small `mpsc` channel (for the session). A full channel
//! costs the new report, counted, never the reader: the `watch` value and the next heartbeat
//! still carry the latest position. [`LocationCounters`] counts what was refused, skipped,
//! dropped, dialled again and stalled.
//!
//! The task ends when its [`LocationTask`] is dropped (it is aborted; it holds nothing but a
//! socket) or when nobody holds either receiver any more.

mod counters;
mod lines;

pub use counters::{KindLabel, LocationCounters, ReasonLabel};
pub use lines::{Line, LineReader};

use crate::config::{LocationConfig, LocationSource};
use counters::LocationEvent;
use node_core::backoff::{Backoff, BackoffPolicy};
use node_core::location::gpsd::MAX_LINE_BYTES;
use node_core::location::{
    Filter, FilterPolicy, Message, Observation, Report, Reporter, parse_line,
};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What the client sends gpsd on connecting: every report, as JSON.
pub const WATCH: &[u8] = b"?WATCH={\"enable\":true,\"json\":true};\n";

/// The client's timings and bounds. [`Default`] is what the daemon runs with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    /// No line for this long while connected: the connection is given up. Default 10 s.
    pub stall_timeout: Duration,
    /// A dial (resolve, connect, send the watch) that takes longer fails. Default 5 s.
    pub connect_timeout: Duration,
    /// The waits between dials. Default 250 ms doubling to 30 s.
    pub reconnect: BackoffPolicy,
    /// The longest line taken. Default gpsd's bound with room to spare.
    pub max_line_bytes: usize,
    /// Reports that may wait for the session. Default 16 (over a minute at the default
    /// `report_min_secs`).
    pub reports_capacity: usize,
    pub filter: FilterPolicy,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            stall_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            reconnect: BackoffPolicy::default(),
            max_line_bytes: MAX_LINE_BYTES,
            reports_capacity: 16,
            filter: FilterPolicy::default(),
        }
    }
}

/// The running client: what it publishes, and the task.
#[derive(Debug)]
pub struct LocationHandle {
    /// The location as of now (`None`: not known, a receiver that never had a fix and no
    /// fallback). For status endpoints.
    pub current: watch::Receiver<Option<Report>>,
    /// Each report when it is due. For the session.
    pub reports: mpsc::Receiver<Report>,
    pub counters: Arc<LocationCounters>,
    /// Dropping it stops the client.
    pub task: LocationTask,
}

/// The client's task: aborted when dropped.
#[derive(Debug)]
pub struct LocationTask(tokio::task::JoinHandle<()>);

impl LocationTask {
    /// Stops the client and waits until it has.
    pub async fn stop(mut self) {
        self.0.abort();
        // Cancelled, or finished before: either way it is over. The drop's abort is then a
        // no-op.
        let _ = (&mut self.0).await;
    }
}

impl Drop for LocationTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the client for `config`, with the default [`Tuning`]. Needs a tokio runtime.
pub fn spawn(config: &LocationConfig) -> LocationHandle {
    spawn_with(config, Tuning::default())
}

/// Starts the client for `config` with `tuning`.
pub fn spawn_with(config: &LocationConfig, tuning: Tuning) -> LocationHandle {
    spawn_counted(config, tuning, Arc::new(LocationCounters::new()))
}

/// Starts the client for `config` with `tuning`, counting into `counters` (the node's,
/// registered with its other metrics).
pub fn spawn_counted(
    config: &LocationConfig,
    tuning: Tuning,
    counters: Arc<LocationCounters>,
) -> LocationHandle {
    let (reporter, link) = match &config.source {
        LocationSource::Fixed(point) => (Reporter::new(config.report, Some(*point)), None),
        LocationSource::Gpsd { address, fallback } => (
            Reporter::new(config.report, *fallback),
            Some(Link::new(address.clone(), tuning)),
        ),
    };
    let (current_tx, current) = watch::channel(reporter.current());
    let (reports_tx, reports) = mpsc::channel(tuning.reports_capacity.max(1));
    let client = Client {
        origin: Instant::now(),
        filter: Filter::new(tuning.filter),
        reporter,
        current: current_tx,
        reports: reports_tx,
        counters: counters.clone(),
    };
    let task = LocationTask(tokio::spawn(run(client, link)));
    LocationHandle {
        current,
        reports,
        counters,
        task,
    }
}

/// The decisions and what they are published on.
struct Client {
    /// `now` for the core is the time since this.
    origin: Instant,
    filter: Filter,
    reporter: Reporter,
    current: watch::Sender<Option<Report>>,
    reports: mpsc::Sender<Report>,
    counters: Arc<LocationCounters>,
}

async fn run(mut client: Client, mut link: Option<Link>) {
    loop {
        let due = client.reporter.next_due().map(|d| client.origin + d);
        tokio::select! {
            // Cancel-safe: a timer, made again from the reporter's state each time round.
            () = sleep_until(due) => {
                let report = client.reporter.poll(client.now());
                client.publish(report);
            }
            // Cancel-safe: see `Link::next_event`.
            event = next_event(link.as_mut()) => {
                if let Some(link) = link.as_mut() {
                    link.handle(event, &mut client);
                }
            }
        }
        if client.current.is_closed() && client.reports.is_closed() {
            return;
        }
    }
}

impl Client {
    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.origin)
    }

    /// One line from gpsd: parsed, judged, observed.
    fn line(&mut self, line: &[u8]) -> Option<Observation> {
        let message = match parse_line(line) {
            Ok(message) => message,
            Err(error) => {
                self.counters.emit(&LocationEvent::Unparsable(&error));
                return None;
            }
        };
        let observation = match message {
            Message::Tpv(observation) => observation,
            Message::Version {
                release,
                proto_major,
                ..
            } => {
                self.counters.emit(&LocationEvent::Version {
                    release: &release,
                    proto_major,
                });
                return None;
            }
            Message::Devices { count } => {
                self.counters.emit(&LocationEvent::Devices { count });
                return None;
            }
            Message::Watch { .. } | Message::Other => return None,
        };
        let now = self.now();
        match self.filter.handle(now, observation) {
            Ok(believed) => {
                if let Observation::Fix(_) = believed {
                    self.counters.emit(&LocationEvent::Believed);
                }
                let report = self.reporter.observe(now, believed);
                self.publish(report);
            }
            Err(refusal) => {
                let (lat, lon) = match observation {
                    Observation::Fix(fix) => (fix.lat, fix.lon),
                    Observation::NoFix { .. } => (f64::NAN, f64::NAN),
                };
                self.counters
                    .emit(&LocationEvent::Refused { refusal, lat, lon });
            }
        }
        Some(observation)
    }

    /// The current location to the `watch`, and `report`, if any, to the session.
    fn publish(&mut self, report: Option<Report>) {
        let current = self.reporter.current();
        self.current.send_if_modified(|shown| {
            let changed = *shown != current;
            *shown = current;
            changed
        });
        let Some(report) = report else { return };
        match self.reports.try_send(report) {
            Ok(()) => self.counters.emit(&LocationEvent::Reported),
            Err(TrySendError::Full(_)) => self.counters.emit(&LocationEvent::ReportDropped),
            // Nobody takes reports any more; the task ends once nobody watches either.
            Err(TrySendError::Closed(_)) => {}
        }
    }
}

/// A dial under way: resolve, connect, send the watch.
type Dial = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>>;

/// The connection to gpsd, as a small state machine of its own.
struct Link {
    address: String,
    tuning: Tuning,
    backoff: Backoff,
    /// Dials started.
    dials: u64,
    state: LinkState,
}

enum LinkState {
    /// Until the next dial.
    Waiting {
        until: Instant,
    },
    Dialling(Dial),
    Connected {
        lines: LineReader<TcpStream>,
        /// No line by then: stalled.
        stall_at: Instant,
    },
}

enum LinkEvent {
    /// The wait is over: dial.
    Dial,
    Dialled(io::Result<TcpStream>),
    Line(io::Result<Option<Line>>),
    Stalled,
}

/// The next thing the link has to act on; never, without a link (a fixed location).
async fn next_event(link: Option<&mut Link>) -> LinkEvent {
    match link {
        Some(link) => link.next_event().await,
        None => std::future::pending().await,
    }
}

impl Link {
    fn new(address: String, tuning: Tuning) -> Self {
        Self {
            address,
            tuning,
            backoff: Backoff::new(tuning.reconnect),
            dials: 0,
            // The first dial at once.
            state: LinkState::Waiting {
                until: Instant::now(),
            },
        }
    }

    /// Cancel-safe, so the caller's `select!` may drop it for another branch:
    /// - waiting: a timer, made again from `until` next time;
    /// - dialling: the dial lives in `self.state` and is only polled here through `&mut`, so
    ///   dropping this future leaves it where it was;
    /// - connected: [`LineReader::next_line`] is cancel-safe (its module says why), and the
    ///   stall deadline is a timer made again from `stall_at`.
    async fn next_event(&mut self) -> LinkEvent {
        match &mut self.state {
            LinkState::Waiting { until } => {
                tokio::time::sleep_until(*until).await;
                LinkEvent::Dial
            }
            LinkState::Dialling(dial) => LinkEvent::Dialled(dial.await),
            LinkState::Connected { lines, stall_at } => tokio::select! {
                line = lines.next_line() => LinkEvent::Line(line),
                () = tokio::time::sleep_until(*stall_at) => LinkEvent::Stalled,
            },
        }
    }

    fn handle(&mut self, event: LinkEvent, client: &mut Client) {
        let gpsd = self.address.as_str();
        match event {
            LinkEvent::Dial => {
                self.dials += 1;
                if self.dials > 1 {
                    client.counters.emit(&LocationEvent::Redial { gpsd });
                }
                self.state = LinkState::Dialling(Box::pin(dial(
                    self.address.clone(),
                    self.tuning.connect_timeout,
                )));
            }
            LinkEvent::Dialled(Ok(stream)) => {
                client.counters.emit(&LocationEvent::Connected { gpsd });
                self.state = LinkState::Connected {
                    lines: LineReader::new(stream, self.tuning.max_line_bytes),
                    stall_at: Instant::now() + self.tuning.stall_timeout,
                };
            }
            LinkEvent::Dialled(Err(error)) => self.lost(&error.to_string(), client),
            LinkEvent::Line(Ok(Some(line))) => {
                if let LinkState::Connected { stall_at, .. } = &mut self.state {
                    *stall_at = Instant::now() + self.tuning.stall_timeout;
                }
                match line {
                    Line::TooLong(bytes) => {
                        client.counters.emit(&LocationEvent::LineTooLong { bytes });
                    }
                    Line::Text(text) => {
                        if client.line(&text).is_some() {
                            // gpsd and its receiver work: the next failure waits little.
                            self.backoff.reset();
                        }
                    }
                }
            }
            LinkEvent::Line(Ok(None)) => self.lost("gpsd closed the connection", client),
            LinkEvent::Line(Err(error)) => self.lost(&error.to_string(), client),
            LinkEvent::Stalled => {
                client.counters.emit(&LocationEvent::Stalled {
                    gpsd,
                    silent_for: self.tuning.stall_timeout,
                });
                self.lost("no line from gpsd", client);
            }
        }
    }

    /// The dial failed or the connection is over (dropped with the old state): wait, then
    /// dial again.
    fn lost(&mut self, error: &str, client: &Client) {
        let retry_in = self.backoff.next_delay(fastrand::u64(..));
        client.counters.emit(&LocationEvent::Lost {
            gpsd: &self.address,
            error,
            retry_in,
        });
        self.state = LinkState::Waiting {
            until: Instant::now() + retry_in,
        };
    }
}

/// Connects to `address` (`host:port`, resolved here) and asks gpsd to watch, within
/// `timeout`.
async fn dial(address: String, timeout: Duration) -> io::Result<TcpStream> {
    let connect = async {
        let mut stream = TcpStream::connect(address.as_str()).await?;
        stream.write_all(WATCH).await?;
        Ok(stream)
    };
    tokio::time::timeout(timeout, connect)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {} s", timeout.as_secs()),
            ))
        })
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The node's location as the daemon runs it: a gpsd source's client, with its reports for
/// the outbox (the node's track) and its current location on `/status`. A fixed point
/// starts nothing: the capabilities carry it, and `/status` shows it from the start.
pub fn start_for_node(
    config: Option<&LocationConfig>,
    board: &crate::status::StatusBoard,
    counters: Arc<LocationCounters>,
) -> Option<LocationHandle> {
    let config = config?;
    if let LocationSource::Fixed(_) = config.source {
        let shown = Reporter::new(config.report, config.point()).current();
        board.update(|s| s.location = shown.as_ref().map(Into::into));
        return None;
    }
    let handle = spawn_counted(config, Tuning::default(), counters);
    let (mut current, board) = (handle.current.clone(), board.clone());
    tokio::spawn(async move {
        loop {
            let shown = current.borrow_and_update().as_ref().map(Into::into);
            board.update(|s| s.location = shown);
            if current.changed().await.is_err() {
                return;
            }
        }
    });
    Some(handle)
}

/// The next report due, from a node's location client; never, without one. Cancel-safe:
/// a channel's `recv`.
pub async fn next_report(handle: Option<&mut LocationHandle>) -> Report {
    match handle {
        Some(h) => match h.reports.recv().await {
            Some(report) => report,
            // The client ended (it does not unless stopped): nothing more will come.
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}
