//! The built `edge-hello` binary over real sockets: each test starts its own server on
//! `127.0.0.1:0`, learns the port from the line it prints once it is listening, and speaks raw
//! HTTP/1.1 to it, so malformed and oversized heads can be sent as they are.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Bounds every read, so that a server that never answers fails the test instead of hanging.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

/// A running server, killed when the test ends.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edge-hello"));
        cmd.args(["--port", "0", "--bind", "127.0.0.1"])
            .env_remove("GREETING")
            .env_remove("EDGE_NODE_NAME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("edge-hello starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("edge-hello prints a line");
        let port = line
            .trim_end()
            .strip_prefix("edge-hello listening on 127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Self { child, port }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connects");
        s.set_read_timeout(Some(CLIENT_TIMEOUT)).expect("timeout");
        s.set_write_timeout(Some(CLIENT_TIMEOUT)).expect("timeout");
        s
    }

    /// Sends `raw` as is and reads the whole answer (the server closes after it).
    fn exchange(&self, raw: &[u8]) -> Reply {
        let mut s = self.connect();
        s.write_all(raw).expect("request sent");
        let mut bytes = Vec::new();
        s.read_to_end(&mut bytes).expect("answer read to the close");
        Reply::parse(&bytes)
    }

    fn get(&self, path: &str) -> Reply {
        self.exchange(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    /// Names lowercased.
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn parse(bytes: &[u8]) -> Self {
        let text = String::from_utf8(bytes.to_vec()).expect("a UTF-8 answer");
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of head in {text:?}"));
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(':').expect("a header line");
                (k.to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        Self {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Status, framing and body together, for one assertion per answer.
    fn assert(&self, status: u16, body: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.body, body, "{self:?}");
        assert_eq!(
            self.header("content-length"),
            Some(body.len().to_string().as_str()),
            "{self:?}"
        );
        assert_eq!(self.header("connection"), Some("close"), "{self:?}");
        assert!(self.header("date").is_some_and(|d| d.ends_with(" GMT")));
    }
}

#[test]
fn greets_with_the_greeting_and_the_node_name() {
    let server = Server::start(&[("GREETING", "hej"), ("EDGE_NODE_NAME", "pi-kitchen-7")]);
    let reply = server.get("/");
    reply.assert(200, "hej from pi-kitchen-7\n");
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    server
        .get("/?from=probe")
        .assert(200, "hej from pi-kitchen-7\n");
}

#[test]
fn greets_with_hello_and_the_host_name_by_default() {
    let server = Server::start(&[]);
    let reply = server.get("/");
    assert_eq!(reply.status, 200, "{reply:?}");
    let node = reply
        .body
        .strip_prefix("hello from ")
        .and_then(|rest| rest.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("{reply:?}"));
    assert!(!node.is_empty() && !node.contains('\n'), "{reply:?}");
}

#[test]
fn healthz_answers_ok() {
    let server = Server::start(&[]);
    server.get("/healthz").assert(200, "ok\n");
    // What the node's health probe sends.
    server
        .exchange(
            format!(
                "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: edge-node-probe\r\n\
                 Connection: close\r\n\r\n",
                server.port
            )
            .as_bytes(),
        )
        .assert(200, "ok\n");
}

#[test]
fn head_gets_the_headers_without_the_body() {
    let server = Server::start(&[("EDGE_NODE_NAME", "n1")]);
    let reply = server.exchange(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "");
    assert_eq!(
        reply.header("content-length"),
        Some("hello from n1\n".len().to_string().as_str())
    );
}

#[test]
fn unknown_paths_are_not_found() {
    let server = Server::start(&[]);
    server.get("/nope").assert(404, "not found\n");
    server.get("/healthz/").assert(404, "not found\n");
}

#[test]
fn other_methods_are_not_allowed() {
    let server = Server::start(&[]);
    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let reply = server.exchange(
            format!("{method} / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello").as_bytes(),
        );
        reply.assert(405, "method not allowed\n");
        assert_eq!(reply.header("allow"), Some("GET, HEAD"), "{method}");
    }
}

#[test]
fn malformed_heads_are_bad_requests() {
    let server = Server::start(&[]);
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /\r\n\r\n",
        b"GET / HTTP/1.1 x\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
        b"\xff\xfe\xfd\r\n\r\n",
        b"\r\n\r\n",
    ] {
        let reply = server.exchange(raw);
        assert_eq!(
            reply.status,
            400,
            "{:?}: {reply:?}",
            String::from_utf8_lossy(raw)
        );
        reply.assert(400, "bad request\n");
    }
}

#[test]
fn a_head_cut_short_is_a_bad_request() {
    let server = Server::start(&[]);
    let mut s = server.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").expect("sent");
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).expect("answer");
    Reply::parse(&bytes).assert(400, "bad request\n");
}

#[test]
fn an_oversized_head_is_a_bad_request() {
    let server = Server::start(&[]);
    let mut raw = b"GET / HTTP/1.1\r\nHost: x\r\nX-Padding: ".to_vec();
    raw.resize(raw.len() + 16 * 1024, b'a');
    raw.extend_from_slice(b"\r\n\r\n");
    server.exchange(&raw).assert(400, "bad request\n");
    // A head just under the limit is still read whole.
    let mut raw = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: ".to_vec();
    raw.resize(8 * 1024 - 4, b'a');
    raw.extend_from_slice(b"\r\n\r\n");
    server.exchange(&raw).assert(200, "ok\n");
}

#[test]
fn a_head_sent_in_pieces_is_read_whole() {
    let server = Server::start(&[("EDGE_NODE_NAME", "n2")]);
    let mut s = server.connect();
    s.set_nodelay(true).expect("nodelay");
    for piece in ["GET / HT", "TP/1.1\r", "\nHost: x\r\n", "\r", "\n"] {
        s.write_all(piece.as_bytes()).expect("sent");
        s.flush().expect("flushed");
    }
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).expect("answer");
    Reply::parse(&bytes).assert(200, "hello from n2\n");
}

#[test]
fn serves_many_clients_at_once() {
    let server = Server::start(&[("EDGE_NODE_NAME", "n3")]);
    // Open connections first, so they are all in the server at the same time.
    let mut conns: Vec<TcpStream> = (0..32).map(|_| server.connect()).collect();
    for (i, s) in conns.iter_mut().enumerate() {
        let path = if i % 2 == 0 { "/" } else { "/healthz" };
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .expect("sent");
    }
    for (i, mut s) in conns.into_iter().enumerate() {
        let mut bytes = Vec::new();
        s.read_to_end(&mut bytes).expect("answer");
        let body = if i % 2 == 0 {
            "hello from n3\n"
        } else {
            "ok\n"
        };
        Reply::parse(&bytes).assert(200, body);
    }
}

#[test]
fn bad_command_lines_exit_with_usage() {
    for args in [
        &[][..],
        &["--port"],
        &["--port", "http"],
        &["--port", "1", "--bind", "x"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_edge-hello"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("usage: edge-hello --port PORT"), "{stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn connections_over_the_limit_get_503() {
    let server = Server::start(&[]);
    // The server accepts in order, so these 64 (its limit) hold every slot, waiting for a
    // head, when the next one is accepted.
    let _held: Vec<TcpStream> = (0..64).map(|_| server.connect()).collect();
    let mut s = server.connect();
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).expect("answer");
    Reply::parse(&bytes).assert(503, "service unavailable\n");
}
