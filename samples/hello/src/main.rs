//! `edge-hello`: the sample workload the orchestrator's demo deploys to edge nodes, a child
//! process the node supervises.
//!
//! It answers `GET /` with `"{GREETING} from {node}\n"` and `GET /healthz` with `ok\n` (the
//! node's HTTP health check). It is meant to stay tiny on a Raspberry Pi, so it is a small
//! HTTP/1.1 responder over std's `TcpListener` rather than a server framework: one thread per
//! connection, at most [`MAX_CONNECTIONS`] at once, one request per connection
//! (`Connection: close`), so there is no keep-alive or body framing to get wrong.
//!
//! **Invariants.** Nothing a client sends can panic the process (the release profile aborts on
//! panic, which would take every connection down) or make it hold more than
//! [`MAX_HEAD_BYTES`] per connection: a head that is malformed or too large gets 400, one that
//! does not arrive within [`HEAD_TIMEOUT`] gets 408, and the connection is closed.
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The largest request head (request line and headers) read; larger gets 400.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// How long a client has to send the whole head, counted from the first read, so that a
/// client dripping one byte at a time cannot hold a thread for long.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a write of the answer may block on a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// After answering, how long and how much of what the client still sends (a body, the rest of
/// an oversized head) is read and dropped before closing. Closing a socket with unread data
/// makes the kernel send a reset, which can destroy the answer before the client reads it.
const LINGER: Duration = Duration::from_millis(500);
const MAX_LINGER_BYTES: usize = 64 * 1024;
/// Connections served at once; more are answered 503 at once. Bounds threads and memory on a
/// small board.
const MAX_CONNECTIONS: usize = 64;
/// Stack of a connection thread: the handler keeps its buffers on the heap.
const STACK_BYTES: usize = 128 * 1024;

const USAGE: &str = "usage: edge-hello --port PORT [--bind ADDR]

  --port PORT   TCP port to listen on; 0 picks a free one (printed on start)
  --bind ADDR   IP address to listen on (default $EDGE_NODE_ADDRESS, else 0.0.0.0)

environment:
  GREETING        the greeting (default \"hello\")
  EDGE_NODE_NAME  the node's name, shown instead of the host name when set
  EDGE_NODE_ADDRESS  the default for --bind (set by edge-node when it has a local address)
  MAX_AGE_SECS    answer `GET /` with `Cache-Control: max-age=SECS` (default: no such header)
";

/// What the command line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Options {
    bind: IpAddr,
    port: u16,
}

/// What the command line asks for: run, or only print the usage.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Run(Options),
    Help,
}

fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Command, String> {
    // On an edge node, the node's own address when it has one, so that several nodes on one
    // host (the demo) can each serve the same port.
    let mut bind = std::env::var("EDGE_NODE_ADDRESS")
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let mut port = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg
            .into_string()
            .map_err(|a| format!("argument {} is not UTF-8", a.to_string_lossy()))?;
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(value.into())),
            _ => (arg, None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            match inline.clone().or_else(|| args.next()) {
                Some(v) => v
                    .into_string()
                    .map_err(|_| format!("{name}: value is not UTF-8")),
                None => Err(format!("{name} needs a value")),
            }
        };
        match flag.as_str() {
            "--port" => {
                let v = value("--port")?;
                let p = v
                    .parse::<u16>()
                    .map_err(|_| format!("--port: {v:?} is not a port number (0 to 65535)"))?;
                port = Some(p);
            }
            "--bind" => {
                let v = value("--bind")?;
                bind = v
                    .parse()
                    .map_err(|_| format!("--bind: {v:?} is not an IP address"))?;
            }
            "-h" | "--help" => return Ok(Command::Help),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let port = port.ok_or("--port is required")?;
    Ok(Command::Run(Options { bind, port }))
}

/// What every connection needs, built once at start.
#[derive(Debug)]
struct App {
    /// The body of `GET /`.
    hello: String,
    /// `Cache-Control: max-age` of `GET /`, from `MAX_AGE_SECS`; none without it.
    max_age_secs: Option<u32>,
}

impl App {
    fn from_env() -> Self {
        let greeting = env_nonempty("GREETING").unwrap_or_else(|| "hello".into());
        let node = env_nonempty("EDGE_NODE_NAME")
            .or_else(hostname)
            .unwrap_or_else(|| "unknown".into());
        Self {
            hello: format!("{greeting} from {node}\n"),
            max_age_secs: env_nonempty("MAX_AGE_SECS").and_then(|v| v.parse().ok()),
        }
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    let v = std::env::var_os(name)?;
    let v = v.to_string_lossy().into_owned();
    (!v.is_empty()).then_some(v)
}

/// The host name without libc (this crate has no unsafe code): Linux keeps it in procfs.
fn hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| {
            let name = std::fs::read_to_string(path).ok()?;
            let name = name.trim();
            (!name.is_empty()).then(|| name.to_owned())
        })
        .or_else(|| env_nonempty("HOSTNAME"))
}

/// Writes a line to stderr; a closed stderr is not worth dying for.
fn log(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "edge-hello: {line}");
}

fn main() -> ExitCode {
    let options = match parse_args(std::env::args_os().skip(1)) {
        Ok(Command::Run(options)) => options,
        Ok(Command::Help) => {
            let _ = io::stdout().lock().write_all(USAGE.as_bytes());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = write!(io::stderr().lock(), "edge-hello: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind((options.bind, options.port)) {
        Ok(l) => l,
        Err(e) => {
            log(format_args!(
                "cannot listen on {}:{}: {e}",
                options.bind, options.port
            ));
            return ExitCode::FAILURE;
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            log(format_args!("cannot read the bound address: {e}"));
            return ExitCode::FAILURE;
        }
    };
    {
        // Whoever started us learns the port (with `--port 0`) and that we accept connections
        // from this line; a closed stdout must not stop the service.
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "edge-hello listening on {addr}");
        let _ = out.flush();
    }
    accept_loop(&listener, Arc::new(App::from_env()));
    ExitCode::SUCCESS
}

/// Frees a connection slot when its thread ends, or when the thread could not be started.
#[derive(Debug)]
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn accept_loop(listener: &TcpListener, app: Arc<App>) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            // Per-connection failures (reset before accept, out of descriptors for a moment):
            // the listener itself is still good.
            Err(e) => {
                log(format_args!("accept: {e}"));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            refuse(stream);
            continue;
        }
        let slot = Slot(Arc::clone(&active));
        let app = Arc::clone(&app);
        let spawned = thread::Builder::new()
            .name("edge-hello-conn".into())
            .stack_size(STACK_BYTES)
            .spawn(move || {
                let _slot = slot;
                serve(stream, &app);
            });
        // On failure the closure is dropped: the connection closes and the slot is freed.
        if let Err(e) = spawned {
            log(format_args!("cannot start a connection thread: {e}"));
        }
    }
}

/// Answers 503 without reading the request: the server is at [`MAX_CONNECTIONS`].
fn refuse(mut stream: TcpStream) {
    // A fresh socket's send buffer takes the few bytes at once; the timeout only guards the
    // accept loop against the unexpected.
    if stream
        .set_write_timeout(Some(Duration::from_millis(100)))
        .is_ok()
    {
        let answer = render(&Answer::error(503, "Service Unavailable"), unix_now());
        let _ = stream.write_all(&answer);
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// One connection: read one head, answer it, close.
fn serve(mut stream: TcpStream, app: &App) {
    if stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
        return;
    }
    let _ = stream.set_nodelay(true);
    let answer = match read_head(&mut stream) {
        Ok(head) => answer(&head, app),
        Err(HeadError::TooLarge | HeadError::Incomplete) => Answer::error(400, "Bad Request"),
        Err(HeadError::TimedOut) => Answer::error(408, "Request Timeout"),
        Err(HeadError::Idle | HeadError::Io) => return,
    };
    if stream.write_all(&render(&answer, unix_now())).is_err() {
        return;
    }
    linger_close(stream);
}

/// Why no complete head was read.
#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    /// The head reached [`MAX_HEAD_BYTES`] without its end.
    TooLarge,
    /// The client closed its side in the middle of the head.
    Incomplete,
    /// The head did not arrive within [`HEAD_TIMEOUT`].
    TimedOut,
    /// The client closed, or sent nothing within [`HEAD_TIMEOUT`]: nobody to answer.
    Idle,
    /// The connection broke.
    Io,
}

/// Reads until the blank line that ends the head. Returns the head up to and including it.
fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let deadline = Instant::now() + HEAD_TIMEOUT;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(&head));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|_| HeadError::Io)?;
        let room = (MAX_HEAD_BYTES - head.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) if head.is_empty() => return Err(HeadError::Idle),
            Ok(0) => return Err(HeadError::Incomplete),
            Ok(n) => {
                // The end may start in the bytes read before: "\n" then "\r\n".
                let from = head.len().saturating_sub(2);
                head.extend_from_slice(&chunk[..n]);
                if let Some(end) = head_end(&head, from) {
                    head.truncate(end);
                    return Ok(head);
                }
                if head.len() >= MAX_HEAD_BYTES {
                    return Err(HeadError::TooLarge);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timed_out(&head));
            }
            Err(_) => return Err(HeadError::Io),
        }
    }
}

fn timed_out(head: &[u8]) -> HeadError {
    if head.is_empty() {
        HeadError::Idle
    } else {
        HeadError::TimedOut
    }
}

/// Where the head ends (just past its blank line), looking from `from` on. Lines end in CRLF;
/// a bare LF is accepted too, as RFC 9112 allows.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let tail = buf.get(from..)?;
    tail.iter().enumerate().find_map(|(i, &b)| {
        if b != b'\n' {
            return None;
        }
        match (tail.get(i + 1), tail.get(i + 2)) {
            (Some(b'\n'), _) => Some(from + i + 2),
            (Some(b'\r'), Some(b'\n')) => Some(from + i + 3),
            _ => None,
        }
    })
}

/// Stops sending, then reads and drops what the client still sends, briefly, so that the
/// answer is not lost to a reset (see [`LINGER`]).
fn linger_close(mut stream: TcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut drained = 0;
    let mut chunk = [0u8; 1024];
    while drained < MAX_LINGER_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => drained += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// An answer before it is written out.
#[derive(Debug, PartialEq, Eq)]
struct Answer<'a> {
    status: u16,
    reason: &'static str,
    body: Cow<'a, str>,
    /// The request was `HEAD`: the same headers, no body.
    head_only: bool,
    /// Sent as `Cache-Control: max-age`, so a caching proxy may keep the answer.
    max_age_secs: Option<u32>,
}

impl Answer<'_> {
    fn ok(body: &str, head_only: bool) -> Answer<'_> {
        Answer {
            status: 200,
            reason: "OK",
            body: Cow::Borrowed(body),
            head_only,
            max_age_secs: None,
        }
    }

    fn error(status: u16, reason: &'static str) -> Answer<'static> {
        Answer {
            status,
            reason,
            body: Cow::Owned(format!("{}\n", reason.to_ascii_lowercase())),
            head_only: false,
            max_age_secs: None,
        }
    }
}

/// The answer to one complete head.
fn answer<'a>(head: &[u8], app: &'a App) -> Answer<'a> {
    let request = match parse(head) {
        Ok(r) => r,
        Err(Malformed::Version) => return Answer::error(505, "HTTP Version Not Supported"),
        Err(Malformed::Syntax) => return Answer::error(400, "Bad Request"),
    };
    let head_only = match request.method {
        "GET" => false,
        "HEAD" => true,
        _ => return Answer::error(405, "Method Not Allowed"),
    };
    match request.path {
        "/" => Answer {
            max_age_secs: app.max_age_secs,
            ..Answer::ok(&app.hello, head_only)
        },
        "/healthz" => Answer::ok("ok\n", head_only),
        _ => Answer {
            head_only,
            ..Answer::error(404, "Not Found")
        },
    }
}

/// The parts of a request this server routes on.
#[derive(Debug, PartialEq, Eq)]
struct Request<'a> {
    method: &'a str,
    /// The target's path, without query.
    path: &'a str,
}

/// Why a head is not a request this server accepts.
#[derive(Debug, PartialEq, Eq)]
enum Malformed {
    /// Not an HTTP/1.x request head: answered 400.
    Syntax,
    /// A well-formed `HTTP/d.d` version other than 1.0 and 1.1: answered 505.
    Version,
}

/// Parses a head as RFC 9112 has it: a request line of exactly three parts, then header lines
/// `name: value` without folding; an HTTP/1.1 request has exactly one `Host`.
fn parse(head: &[u8]) -> Result<Request<'_>, Malformed> {
    let mut lines = head.split(|&b| b == b'\n').map(|line| match line {
        [rest @ .., b'\r'] => rest,
        _ => line,
    });
    let line = lines.next().ok_or(Malformed::Syntax)?;
    let line = std::str::from_utf8(line).map_err(|_| Malformed::Syntax)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Malformed::Syntax);
    };
    if method.is_empty() || !method.bytes().all(is_token) {
        return Err(Malformed::Syntax);
    }
    let path = path_of(target).ok_or(Malformed::Syntax)?;
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        v if is_version(v) => return Err(Malformed::Version),
        _ => return Err(Malformed::Syntax),
    };
    let mut hosts = 0;
    for line in lines {
        if line.is_empty() {
            break;
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(Malformed::Syntax)?;
        let (name, value) = line.split_at(colon);
        // An empty name covers obs-fold too (a line starting with a space), which RFC 9112
        // lets a server reject.
        if name.is_empty() || !name.iter().copied().all(is_token) {
            return Err(Malformed::Syntax);
        }
        if value.iter().any(|&b| b == b'\r' || b == 0) {
            return Err(Malformed::Syntax);
        }
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        }
    }
    if hosts > 1 || (http11 && hosts == 0) {
        return Err(Malformed::Syntax);
    }
    Ok(Request { method, path })
}

/// The path of an origin-form (`/a?b`) or absolute-form (`http://host/a?b`) target.
fn path_of(target: &str) -> Option<&str> {
    if !target.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let without_query = |s: &str| -> usize { s.find(['?', '#']).unwrap_or(s.len()) };
    if target.starts_with('/') {
        return target.get(..without_query(target));
    }
    let scheme_end = target.find("://")?;
    let scheme = target.get(..scheme_end)?;
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return None;
    }
    let rest = target.get(scheme_end + 3..)?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if authority_end == 0 {
        return None;
    }
    let path = rest.get(authority_end..)?;
    let path = path.get(..without_query(path))?;
    Some(if path.is_empty() { "/" } else { path })
}

/// `tchar` of RFC 9110: the characters of methods and header names.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// `HTTP/d.d`.
fn is_version(v: &str) -> bool {
    matches!(v.as_bytes(), [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
        if major.is_ascii_digit() && minor.is_ascii_digit())
}

fn render(answer: &Answer<'_>, now_secs: u64) -> Vec<u8> {
    let body = answer.body.as_bytes();
    let mut out = Vec::with_capacity(192 + body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nDate: {}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        answer.status,
        answer.reason,
        http_date(now_secs),
        body.len()
    );
    if answer.status == 405 {
        out.extend_from_slice(b"Allow: GET, HEAD\r\n");
    }
    if let Some(secs) = answer.max_age_secs {
        let _ = write!(out, "Cache-Control: max-age={secs}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !answer.head_only {
        out.extend_from_slice(body);
    }
    out
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), which RFC 9110 has an origin server with
/// a clock send in `Date`.
fn http_date(unix_secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_secs / 86_400;
    let secs = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Year, month (1 to 12) and day of the month of a day count since 1970-01-01, by Howard
/// Hinnant's `civil_from_days`, for days on or after the epoch.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shifted so that eras of 400 years start on 0000-03-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Command, String> {
        parse_args(list.iter().map(OsString::from))
    }

    #[test]
    fn command_line() {
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            args(&["--port", "8080"]),
            Ok(Command::Run(Options {
                bind: any,
                port: 8080
            }))
        );
        assert_eq!(
            args(&["--bind=127.0.0.1", "--port=0"]),
            Ok(Command::Run(Options {
                bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: 0
            }))
        );
        assert_eq!(
            args(&["--bind", "::1", "--port", "1"]).map(|c| match c {
                Command::Run(o) => o.bind.to_string(),
                Command::Help => String::new(),
            }),
            Ok("::1".into())
        );
        assert_eq!(args(&["--help"]), Ok(Command::Help));
        assert!(args(&[]).is_err(), "port is required");
        assert!(args(&["--port"]).is_err());
        assert!(args(&["--port", "65536"]).is_err());
        assert!(args(&["--port", "-1"]).is_err());
        assert!(args(&["--port", "1", "--bind", "localhost"]).is_err());
        assert!(args(&["--port", "1", "extra"]).is_err());
    }

    #[test]
    fn finds_the_end_of_the_head() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n", 0), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nbody", 0), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r", 0), None);
        // The search resumes two bytes back, where the terminator may have begun.
        let head = b"GET / HTTP/1.1\r\n\r\n";
        assert_eq!(head_end(head, head.len() - 3 - 2), Some(18));
        assert_eq!(head_end(b"", 0), None);
        assert_eq!(head_end(b"ab", 5), None);
    }

    fn parsed(head: &str) -> Result<Request<'_>, Malformed> {
        parse(head.as_bytes())
    }

    #[test]
    fn parses_request_heads() {
        let get = |path| {
            Ok(Request {
                method: "GET",
                path,
            })
        };
        assert_eq!(parsed("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), get("/"));
        assert_eq!(
            parsed("GET /healthz?x=1 HTTP/1.1\r\nhost:a\r\n\r\n"),
            get("/healthz")
        );
        assert_eq!(
            parsed("GET / HTTP/1.0\r\n\r\n"),
            get("/"),
            "1.0 needs no Host"
        );
        assert_eq!(parsed("GET / HTTP/1.1\nHost: a\n\n"), get("/"), "bare LF");
        assert_eq!(
            parsed("GET http://a:80/healthz?q HTTP/1.1\r\nHost: a\r\n\r\n"),
            get("/healthz")
        );
        assert_eq!(parsed("GET HTTP://a HTTP/1.1\r\nHost: a\r\n\r\n"), get("/"));
        assert_eq!(
            parsed("DELETE /x HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Request {
                method: "DELETE",
                path: "/x"
            })
        );
        assert_eq!(
            parsed("GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
            Err(Malformed::Version)
        );
        for bad in [
            "\r\n\r\n",
            "GARBAGE\r\n\r\n",
            "GET /\r\n\r\n",
            "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nno colon\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\0\r\n\r\n",
            "G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET x HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / http/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1x\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(parsed(bad), Err(Malformed::Syntax), "{bad:?}");
        }
        assert_eq!(parse(b"GET /\xff HTTP/1.1\r\n\r\n"), Err(Malformed::Syntax));
    }

    #[test]
    fn routes() {
        let app = App {
            hello: "hi from n\n".into(),
            max_age_secs: None,
        };
        let status = |head: &str| answer(head.as_bytes(), &app).status;
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), 200);
        assert_eq!(status("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"), 200);
        assert_eq!(status("GET /nope HTTP/1.1\r\nHost: a\r\n\r\n"), 404);
        assert_eq!(status("POST / HTTP/1.1\r\nHost: a\r\n\r\n"), 405);
        assert_eq!(status("GET / HTTP/3.0\r\nHost: a\r\n\r\n"), 505);
        assert_eq!(status("nonsense\r\n\r\n"), 400);
        let head = answer(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", &app);
        assert_eq!(head, Answer::ok("hi from n\n", true));
        let cached = App {
            max_age_secs: Some(60),
            ..app
        };
        let out = render(&answer(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", &cached), 0);
        assert!(String::from_utf8_lossy(&out).contains("\r\nCache-Control: max-age=60\r\n"));
    }

    #[test]
    fn renders_answers() {
        let out = render(&Answer::ok("ok\n", false), 784_111_777);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\n\
             Connection: close\r\n\r\nok\n"
        );
        let head = render(&Answer::ok("ok\n", true), 0);
        assert!(head.ends_with(b"Content-Length: 3\r\nConnection: close\r\n\r\n"));
        let refused =
            String::from_utf8_lossy(&render(&Answer::error(405, "Method Not Allowed"), 0))
                .into_owned();
        assert!(refused.contains("\r\nAllow: GET, HEAD\r\n"), "{refused}");
        assert!(
            refused.ends_with("\r\n\r\nmethod not allowed\n"),
            "{refused}"
        );
    }

    #[test]
    fn formats_http_dates() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(http_date(4_102_444_799), "Thu, 31 Dec 2099 23:59:59 GMT");
    }
}
