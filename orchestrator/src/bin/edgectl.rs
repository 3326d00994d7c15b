//! `edgectl`: the operator's command line for the orchestrator's HTTP API.
//!
//! A thin client: every command is one or two API calls, and `--json` prints the API's JSON as
//! it came (indented). Errors print `edgectl: <the API's message>` and exit 1.

use clap::{Parser, Subcommand, ValueEnum};
use orchestrator::api::{CreateTokenRequest, ErrorBody, NodeView, TokenCreated, TokenView};
use orchestrator::api_artifacts::{ARTIFACT_CONTENT_TYPE, ArtifactView};
use orchestrator::api_workloads::WorkloadView;
use orchestrator::artifacts::{sha256_reader, to_hex};
use orchestrator_core::workload::WorkloadSpec;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

#[derive(Debug, Parser)]
#[command(
    name = "edgectl",
    version,
    about = "Manage an edge fleet through the orchestrator's API"
)]
struct Cli {
    /// The orchestrator's operator API.
    #[arg(
        long,
        global = true,
        env = "EDGE_API",
        default_value = "http://127.0.0.1:7480"
    )]
    api: String,
    /// An API bearer token; `edge-orchestrator serve` writes an admin one to DATA_DIR/admin.token.
    #[arg(long, global = true, env = "EDGE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON instead of a table or summary.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the nodes.
    Nodes {
        /// Only nodes with this status.
        #[arg(long)]
        status: Option<StatusArg>,
    },
    /// Show one node in detail.
    Node {
        /// The node's name or id.
        name: String,
    },
    /// Join tokens for new nodes.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Workload executables, stored by the orchestrator and fetched by nodes.
    Artifact {
        #[command(subcommand)]
        command: ArtifactCommand,
    },
    /// Deploy a workload from a spec file (TOML), or change a deployed one.
    Deploy {
        /// The spec: name, version, artifact, args, env, replicas or placement, resources,
        /// requirements, restart, health.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List the workloads, or show one with the state of each instance and why any is missing.
    Workloads {
        /// A workload to show in detail.
        name: Option<String>,
    },
    /// Delete a workload and stop its instances everywhere.
    Delete {
        /// The workload's name.
        name: String,
    },
    /// Print a workload's log, read from its nodes.
    Logs {
        /// The workload's name.
        name: String,
        /// Only this node (name or id); otherwise every node, each line prefixed by its name.
        #[arg(long)]
        node: Option<String>,
        /// Keep printing new lines until interrupted.
        #[arg(short = 'f', long)]
        follow: bool,
        /// How many of the latest lines to print first.
        #[arg(long, default_value_t = 100)]
        tail: u32,
    },
    /// Place no new instances on a node.
    Cordon {
        /// The node's name or id.
        node: String,
    },
    /// Let the scheduler use a cordoned node again.
    Uncordon {
        /// The node's name or id.
        node: String,
    },
    /// Cordon a node and move its instances to other nodes.
    Drain {
        /// The node's name or id.
        node: String,
    },
}

#[derive(Debug, Subcommand)]
enum ArtifactCommand {
    /// Upload an executable and print its digest, for a workload spec's `artifact`.
    Push {
        /// The executable (for the nodes' architecture).
        path: PathBuf,
    },
    /// List the stored artifacts.
    List,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StatusArg {
    Online,
    Offline,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a join token and print the `[join]` settings for a node's config.
    Create {
        /// How long it is valid: 90s, 15m, 1h, 7d (at most 30d). The API's default is 1h.
        #[arg(long)]
        ttl: Option<String>,
        /// How many nodes may join with it (1 to 10000). The API's default is 1.
        #[arg(long)]
        uses: Option<u32>,
        /// A note for `token list`, e.g. where the node goes.
        #[arg(long)]
        description: Option<String>,
    },
    /// List join tokens (never their secrets).
    List,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum CliError {
    /// The API answered with an error; the message is its own.
    #[error("{message}")]
    Api { status: u16, message: String },
    /// `--api` is not an `http://` URL.
    #[error("--api {0:?} is not a URL like http://127.0.0.1:7480 (the operator API is plain HTTP)")]
    BadUrl(String),
    /// Nothing answered at the API address.
    #[error(
        "cannot reach the orchestrator API at {api}: {reason} (is `edge-orchestrator serve` running? set --api or EDGE_API)"
    )]
    Unreachable { api: String, reason: String },
    /// The request could not be made or the answer read.
    #[error("talking to the orchestrator API at {api}: {reason}")]
    Transport { api: String, reason: String },
    /// A local file could not be read.
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    /// The API answered something we do not understand.
    #[error("unexpected answer from {api}: {reason}")]
    BadResponse { api: String, reason: String },
    /// The spec file is not a valid workload spec; the message names the field.
    #[error("{path}: {reason}")]
    Spec { path: String, reason: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`edgectl nodes | head`) is not an error worth reporting.
            let _ = stdout
                .write_all(out.as_bytes())
                .and_then(|()| stdout.flush());
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut message = e.to_string();
            if matches!(e, CliError::Api { status: 401, .. }) && cli.token.is_none() {
                message.push_str(
                    " (pass --token or set EDGE_TOKEN; the orchestrator writes an admin token to DATA_DIR/admin.token)",
                );
            }
            eprintln!("edgectl: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command; returns what to print.
fn run(cli: &Cli) -> Result<String, CliError> {
    if !cli.api.starts_with("http://") {
        return Err(CliError::BadUrl(cli.api.clone()));
    }
    let client = Client::new(&cli.api, cli.token.as_deref());
    match &cli.command {
        Command::Nodes { status } => {
            let path = match status {
                None => "/v1/nodes".to_owned(),
                Some(StatusArg::Online) => "/v1/nodes?status=online".to_owned(),
                Some(StatusArg::Offline) => "/v1/nodes?status=offline".to_owned(),
            };
            let body = client.get(&path)?;
            client.show(cli.json, &body, |nodes: &Vec<NodeView>| {
                nodes_table(nodes, unix_now())
            })
        }
        Command::Node { name } => {
            let body = client.get(&format!("/v1/nodes/{}", percent_encode(name)))?;
            client.show(cli.json, &body, |node: &NodeView| {
                node_summary(node, unix_now())
            })
        }
        Command::Token {
            command:
                TokenCommand::Create {
                    ttl,
                    uses,
                    description,
                },
        } => {
            let request = CreateTokenRequest {
                ttl: ttl.clone(),
                ttl_secs: None,
                uses: *uses,
                description: description.clone(),
            };
            let body = client.post("/v1/tokens", &request)?;
            client.show(cli.json, &body, token_created)
        }
        Command::Token {
            command: TokenCommand::List,
        } => {
            let body = client.get("/v1/tokens")?;
            client.show(cli.json, &body, |tokens: &Vec<TokenView>| {
                tokens_table(tokens, unix_now())
            })
        }
        Command::Artifact {
            command: ArtifactCommand::Push { path },
        } => {
            let body = client.push_artifact(path)?;
            client.show(cli.json, &body, artifact_pushed)
        }
        Command::Artifact {
            command: ArtifactCommand::List,
        } => {
            let body = client.get("/v1/artifacts")?;
            client.show(cli.json, &body, |artifacts: &Vec<ArtifactView>| {
                artifacts_table(artifacts)
            })
        }
        Command::Deploy { file } => {
            let path = file.display().to_string();
            let text = std::fs::read_to_string(file).map_err(|e| CliError::File {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            // Checked here first, so a mistake names the field before anything is sent.
            let spec = WorkloadSpec::from_toml(&text).map_err(|e| CliError::Spec {
                path,
                reason: e.to_string(),
            })?;
            let body = client.post("/v1/workloads", &spec)?;
            client.show(cli.json, &body, deployed)
        }
        Command::Workloads { name: None } => {
            let body = client.get("/v1/workloads")?;
            client.show(cli.json, &body, |all: &Vec<WorkloadView>| {
                workloads_table(all)
            })
        }
        Command::Workloads { name: Some(name) } => {
            let body = client.get(&format!("/v1/workloads/{}", percent_encode(name)))?;
            client.show(cli.json, &body, workload_summary)
        }
        Command::Delete { name } => {
            client.delete(&format!("/v1/workloads/{}", percent_encode(name)))?;
            Ok(if cli.json {
                format!(
                    "{{\"deleted\": {}}}\n",
                    serde_json::Value::from(name.as_str())
                )
            } else {
                format!("deleted {name}; its instances stop as their nodes hear of it\n")
            })
        }
        Command::Logs {
            name,
            node,
            follow,
            tail,
        } => {
            let mut path = format!(
                "/v1/workloads/{}/logs?tail={tail}&follow={follow}",
                percent_encode(name)
            );
            if let Some(node) = node {
                let _ = write!(path, "&node={}", percent_encode(node));
            }
            client.stream(&path, &mut std::io::stdout().lock())?;
            Ok(String::new())
        }
        Command::Cordon { node } => node_action(cli, &client, node, "cordon"),
        Command::Uncordon { node } => node_action(cli, &client, node, "uncordon"),
        Command::Drain { node } => node_action(cli, &client, node, "drain"),
    }
}

/// `cordon`, `uncordon` or `drain` a node.
fn node_action(cli: &Cli, client: &Client, node: &str, action: &str) -> Result<String, CliError> {
    let body = client.post(
        &format!("/v1/nodes/{}/{action}", percent_encode(node)),
        &serde_json::json!({}),
    )?;
    client.show(cli.json, &body, |n: &NodeView| match action {
        "drain" => format!(
            "{} cordoned and drained: its instances move to other nodes\n",
            n.name
        ),
        "cordon" => format!("{} cordoned: no new instances go there\n", n.name),
        _ => format!("{} uncordoned\n", n.name),
    })
}

// ---------------------------------------------------------------------------------------------
// The HTTP client

struct Client {
    agent: ureq::Agent,
    api: String,
    token: Option<String>,
}

impl Client {
    fn new(api: &str, token: Option<&str>) -> Self {
        let config = ureq::Agent::config_builder()
            // Error statuses carry the API's JSON error body; we read it ourselves.
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build();
        Self {
            agent: config.into(),
            api: api.trim_end_matches('/').to_owned(),
            token: token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    fn get(&self, path: &str) -> Result<String, CliError> {
        let mut request = self.agent.get(self.url(path));
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        self.finish(request.call())
    }

    fn post(&self, path: &str, body: &impl serde::Serialize) -> Result<String, CliError> {
        let mut request = self.agent.post(self.url(path));
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        self.finish(request.send_json(body))
    }

    fn delete(&self, path: &str) -> Result<String, CliError> {
        let mut request = self.agent.delete(self.url(path));
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        self.finish(request.call())
    }

    /// Copies a streamed answer to `out` as it arrives: no deadline once it has started.
    fn stream(&self, path: &str, out: &mut impl std::io::Write) -> Result<(), CliError> {
        let mut request = self.agent.get(self.url(path));
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let request = request
            .config()
            .timeout_global(None)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(30)))
            .build();
        let mut response = request.call().map_err(|e| self.transport_error(e))?;
        if !response.status().is_success() {
            return self.finish(Ok(response)).map(drop);
        }
        let mut reader = response.body_mut().as_reader();
        let mut buf = [0u8; 8192];
        loop {
            let n =
                std::io::Read::read(&mut reader, &mut buf).map_err(|e| CliError::Transport {
                    api: self.api.clone(),
                    reason: e.to_string(),
                })?;
            if n == 0 {
                return Ok(());
            }
            // A closed pipe (`edgectl logs x | head`) ends the stream quietly.
            if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                return Ok(());
            }
        }
    }

    /// Uploads the file at `path` with its sha256 (hashed here first), so the orchestrator
    /// stores exactly the bytes on this disk or nothing.
    fn push_artifact(&self, path: &std::path::Path) -> Result<String, CliError> {
        let file_error = |e: std::io::Error| CliError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let (digest, _) =
            sha256_reader(std::fs::File::open(path).map_err(file_error)?).map_err(file_error)?;
        let file = std::fs::File::open(path).map_err(file_error)?;
        let mut request = self
            .agent
            .post(self.url(&format!("/v1/artifacts?sha256={}", to_hex(&digest))))
            .content_type(ARTIFACT_CONTENT_TYPE);
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        // An artifact may be hundreds of MiB over a slow link: no deadline for the whole call,
        // only for connecting and for the answer once the body is sent.
        let request = request
            .config()
            .timeout_global(None)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .build();
        self.finish(request.send(file))
    }

    /// The body of a successful response, or the API's error.
    fn finish(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<String, CliError> {
        let mut response = result.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| self.transport_error(e))?;
        if status.is_success() {
            return Ok(body);
        }
        let message = match serde_json::from_str::<ErrorBody>(&body) {
            Ok(e) => e.message,
            Err(_) => format!(
                "HTTP {status} without an API error body; is {} the orchestrator API?",
                self.api
            ),
        };
        Err(CliError::Api {
            status: status.as_u16(),
            message,
        })
    }

    fn transport_error(&self, e: ureq::Error) -> CliError {
        let api = self.api.clone();
        match e {
            ureq::Error::Io(io) => CliError::Unreachable {
                api,
                reason: match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
                    std::io::ErrorKind::TimedOut => "timed out".into(),
                    _ => io.to_string(),
                },
            },
            ureq::Error::ConnectionFailed => CliError::Unreachable {
                api,
                reason: "connection failed".into(),
            },
            ureq::Error::HostNotFound => CliError::Unreachable {
                api,
                reason: "host not found".into(),
            },
            ureq::Error::Timeout(t) => CliError::Unreachable {
                api,
                reason: format!("timed out ({t})"),
            },
            ureq::Error::BadUri(uri) => CliError::Transport {
                api,
                reason: format!("not a usable URL: {uri}"),
            },
            other => CliError::Transport {
                api,
                reason: other.to_string(),
            },
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, body: &str) -> Result<T, CliError> {
        serde_json::from_str(body).map_err(|e| CliError::BadResponse {
            api: self.api.clone(),
            reason: e.to_string(),
        })
    }

    /// With `--json`, the API's JSON as it came (indented); otherwise `render` of it.
    fn show<T: serde::de::DeserializeOwned>(
        &self,
        json: bool,
        body: &str,
        render: impl FnOnce(&T) -> String,
    ) -> Result<String, CliError> {
        if json {
            return self.reindent(body);
        }
        Ok(render(&self.parse(body)?))
    }

    /// The API's JSON, indented, in the API's own key order.
    fn reindent(&self, body: &str) -> Result<String, CliError> {
        self.parse::<serde_json::Value>(body)?;
        Ok(indent_json(body))
    }
}

/// Indents JSON text (known to be valid) by two spaces, keeping key order and string contents.
fn indent_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = json.chars().peekable();
    let newline = |out: &mut String, depth: usize| {
        out.push('\n');
        out.push_str(&"  ".repeat(depth));
    };
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                if let Some(&close) = chars.peek()
                    && (close == '}' || close == ']')
                {
                    // Empty: `{}` or `[]` on one line.
                    out.push(close);
                    chars.next();
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_whitespace() => {}
            c => out.push(c),
        }
    }
    out.push('\n');
    out
}

/// Escapes a path segment (a node name or id never needs it, but a typo might).
fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Output

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Columns padded to their widest cell; the last column is not padded.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn nodes_table(nodes: &[NodeView], now: u64) -> String {
    let mut rows = vec![
        [
            "NAME",
            "STATUS",
            "ARCH",
            "CPUS",
            "MEMORY",
            "LOCATION",
            "LAST SEEN",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for n in nodes {
        rows.push(vec![
            n.name.clone(),
            match &n.conflict {
                Some(_) => format!("{} (identity conflict)", n.status),
                None => n.status.clone(),
            },
            n.arch.clone(),
            n.cpus.to_string(),
            human_bytes(n.memory_bytes),
            n.location
                .map_or_else(|| "-".to_owned(), |l| format!("{:.3},{:.3}", l.lat, l.lon)),
            ago(now.saturating_sub(n.last_seen_unix)),
        ]);
    }
    let mut out = table(&rows);
    if nodes.is_empty() {
        out.push_str("(no nodes yet: `edgectl token create` makes a join token for one)\n");
    }
    out
}

fn node_summary(n: &NodeView, now: u64) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "{:<14}{value}", format!("{key}:"));
    };
    line("Name", n.name.clone());
    line("ID", n.id.clone());
    line(
        "Status",
        format!(
            "{}, last seen {} ({})",
            n.status,
            ago(now.saturating_sub(n.last_seen_unix)),
            n.last_seen
        ),
    );
    if let Some(c) = &n.conflict {
        let from = c.remote.as_deref().unwrap_or("elsewhere");
        let ago_text = ago(now.saturating_sub(c.last_seen_unix));
        line(
            "Conflict",
            format!(
                "{} sessions from {from} refused, the last {ago_text}: {}",
                c.refused, c.message
            ),
        );
    }
    line("Enrolled", n.enrolled_at.clone());
    line("Hostname", n.hostname.clone());
    line("Arch", n.arch.clone());
    line(
        "OS",
        if n.os_version.is_empty() {
            format!("{} (kernel {})", n.os, n.kernel)
        } else {
            format!("{} ({}, kernel {})", n.os_version, n.os, n.kernel)
        },
    );
    line("Board", n.board.clone().unwrap_or_else(|| "-".into()));
    line(
        "CPU",
        if n.cpu_model.is_empty() {
            format!("{} cores", n.cpus)
        } else {
            format!("{} x {}", n.cpus, n.cpu_model)
        },
    );
    line("Memory", human_bytes(n.memory_bytes));
    line(
        "Disk",
        format!(
            "{} ({} free)",
            human_bytes(n.disk_bytes),
            human_bytes(n.disk_free_bytes)
        ),
    );
    line(
        "Location",
        match n.location {
            None => "-".into(),
            Some(l) => match l.alt_m {
                Some(alt) => format!("{:.3},{:.3} ({alt:.0} m)", l.lat, l.lon),
                None => format!("{:.3},{:.3}", l.lat, l.lon),
            },
        },
    );
    line(
        "Labels",
        if n.labels.is_empty() {
            "-".into()
        } else {
            n.labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    if n.accelerators.is_empty() {
        line("Accelerators", "-".into());
    } else {
        for (i, a) in n.accelerators.iter().enumerate() {
            let key = if i == 0 { "Accelerators" } else { "" };
            let text = format!("{} {} ({})", a.kind, a.name, a.path);
            if key.is_empty() {
                let _ = writeln!(out, "{:<14}{text}", "");
            } else {
                let _ = writeln!(out, "{:<14}{text}", format!("{key}:"));
            }
        }
    }
    let load = match n.load {
        None => "- (no status report yet)".to_owned(),
        Some(l) => format!(
            "cpu {:.1}%, memory {} used, disk {} free, up {}",
            l.cpu_percent,
            human_bytes(l.memory_used_bytes),
            human_bytes(l.disk_free_bytes),
            duration(l.uptime_secs)
        ),
    };
    let _ = writeln!(out, "{:<14}{load}", "Load:");
    out
}

fn token_created(t: &TokenCreated) -> String {
    let uses = if t.uses == 1 {
        "1 use".to_owned()
    } else {
        format!("{} uses", t.uses)
    };
    format!(
        "Join token: {token}\n\
         CA hash:    {ca_hash}\n\
         Expires:    {expires} ({uses})\n\
         \n\
         The token is shown only now. Put this in the node's config file (it is used on the\n\
         node's first start only):\n\
         \n\
         [join]\n\
         token = {token_toml}\n\
         ca_hash = {ca_toml}\n",
        token = t.token,
        ca_hash = t.ca_hash,
        expires = t.expires_at,
        token_toml = toml_string(&t.token),
        ca_toml = toml_string(&t.ca_hash),
    )
}

fn artifact_pushed(a: &ArtifactView) -> String {
    format!(
        "Digest: {digest}\n\
         Size:   {size} bytes ({human})\n\
         \n\
         Name it in a workload spec:\n\
         artifact = {digest_toml}\n",
        digest = a.digest,
        size = a.size,
        human = human_bytes(a.size),
        digest_toml = toml_string(&a.digest),
    )
}

fn deployed(w: &WorkloadView) -> String {
    let mut out = format!(
        "deployed {} {} (generation {}): {} of {} instances placed",
        w.name,
        w.version,
        w.generation,
        w.instances.len(),
        w.wanted
    );
    if !w.instances.is_empty() {
        let nodes: Vec<&str> = w.instances.iter().map(|i| i.node.as_str()).collect();
        let _ = write!(out, " on {}", nodes.join(", "));
    }
    out.push('\n');
    out.push_str(&unplaced(w));
    let _ = writeln!(out, "watch it with `edgectl workloads {}`", w.name);
    out
}

/// Why the missing instances have no node, one line per node.
fn unplaced(w: &WorkloadView) -> String {
    let mut out = String::new();
    if w.unplaced.is_empty() && w.refusals.is_empty() {
        return out;
    }
    let missing = w
        .wanted
        .saturating_sub(u32::try_from(w.instances.len()).unwrap_or(u32::MAX));
    if missing > 0 {
        let _ = writeln!(out, "{missing} not placed:");
    }
    for r in &w.refusals {
        let _ = writeln!(out, "  {}: refused: {}", r.node, r.reason);
    }
    for u in &w.unplaced {
        let _ = writeln!(out, "  {}: {}", u.node, u.reason);
    }
    out
}

fn workloads_table(all: &[WorkloadView]) -> String {
    let mut rows = vec![
        [
            "NAME",
            "VERSION",
            "PLACEMENT",
            "WANTED",
            "PLACED",
            "RUNNING",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for w in all {
        rows.push(vec![
            w.name.clone(),
            w.version.clone(),
            w.placement.clone(),
            w.wanted.to_string(),
            w.instances.len().to_string(),
            w.running.to_string(),
        ]);
    }
    let mut out = table(&rows);
    if all.is_empty() {
        out.push_str("(no workloads yet: `edgectl deploy -f FILE` deploys one)\n");
    }
    out
}

fn workload_summary(w: &WorkloadView) -> String {
    let mut out = format!(
        "{} {} (generation {}): {} of {} running\n",
        w.name, w.version, w.generation, w.running, w.wanted
    );
    if !w.instances.is_empty() {
        let mut rows = vec![
            ["NODE", "STATE", "RESTARTS", "PID", "MESSAGE"]
                .map(str::to_owned)
                .to_vec(),
        ];
        for i in &w.instances {
            rows.push(vec![
                i.node.clone(),
                i.state.clone(),
                i.restarts.to_string(),
                i.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
                i.message.clone(),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out.push_str(&unplaced(w));
    out
}

fn artifacts_table(artifacts: &[ArtifactView]) -> String {
    let mut rows = vec![["DIGEST", "SIZE"].map(str::to_owned).to_vec()];
    for a in artifacts {
        rows.push(vec![a.digest.clone(), human_bytes(a.size)]);
    }
    let mut out = table(&rows);
    if artifacts.is_empty() {
        out.push_str("(no artifacts yet: `edgectl artifact push PATH` uploads one)\n");
    }
    out
}

fn tokens_table(tokens: &[TokenView], now: u64) -> String {
    let mut rows = vec![
        ["ID", "USES LEFT", "EXPIRES", "DESCRIPTION"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for t in tokens {
        let expires = if t.expires_unix <= now {
            "expired".to_owned()
        } else {
            format!("in {}", duration(t.expires_unix - now))
        };
        rows.push(vec![
            t.id.clone(),
            t.uses_left.to_string(),
            expires,
            t.description.clone(),
        ]);
    }
    table(&rows)
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `3.8 GiB`: binary units, one decimal.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `3s ago`, `5m ago`, `2h ago`, `4d ago`.
fn ago(secs: u64) -> String {
    let text = match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    };
    format!("{text} ago")
}

/// `45s`, `12m 3s`, `4h 12m`, `3d 4h`.
fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {}s", secs / 60, secs % 60),
        3600..86_400 => format!("{}h {}m", secs / 3600, secs / 60 % 60),
        _ => format!("{}d {}h", secs / 86_400, secs / 3600 % 24),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_indented_in_order() {
        let text =
            r#"{"token":"a.b","ca_hash":"sha256:x","n":[1,{"k":"v, \"q\": {x}"}],"e":{},"f":[]}"#;
        let pretty = indent_json(text);
        let reparsed: serde_json::Value = serde_json::from_str(&pretty).expect("valid");
        let original: serde_json::Value = serde_json::from_str(text).expect("valid");
        assert_eq!(reparsed, original);
        assert!(
            pretty.starts_with("{\n  \"token\": \"a.b\",\n  \"ca_hash\""),
            "{pretty}"
        );
        assert!(pretty.contains("\"e\": {},"), "{pretty}");
    }

    #[test]
    fn humane_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(4_080_218_931), "3.8 GiB");
        assert_eq!(human_bytes(512 << 20), "512.0 MiB");
        assert_eq!(ago(3), "3s ago");
        assert_eq!(ago(3600 * 5 + 1), "5h ago");
        assert_eq!(duration(3 * 86_400 + 4 * 3600 + 5), "3d 4h");
    }

    #[test]
    fn segments_are_escaped() {
        assert_eq!(percent_encode("shop-1"), "shop-1");
        assert_eq!(percent_encode("a/b c"), "a%2Fb%20c");
    }
}
