//! `edgectl`: the operator's command line for the orchestrator's HTTP API.
//!
//! A thin client: every command is one or two API calls, and `--json` prints the API's JSON as
//! it came (indented). Errors print `edgectl: <the API's message>` and exit 1.
//!
//! This file is the command line; `client` speaks HTTP to the API; `render` turns its JSON
//! views into tables and summaries.

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use orchestrator::api::views::{
    ApiTokenView, ArtifactView, CreateApiTokenRequest, CreateTokenRequest, NodeView, TokenView,
    WorkloadView,
};
use orchestrator::auth::Role;
use orchestrator::clock::now_unix;
use orchestrator::images::ImageRecord;
use orchestrator_core::workload::WorkloadSpec;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

mod cache;
mod client;
mod render;

use client::{Client, percent_encode};
use render::{
    api_token_created, api_tokens_table, artifact_pushed, artifacts_table, deployed, drained,
    events_table, image_pushed, images_table, model_pushed, models_table, node_summary,
    nodes_table, token_created, tokens_table, workload_summary, workloads_table,
};

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
    /// The operator API's own tokens: issue, list and revoke them (admin only).
    ApiToken {
        #[command(subcommand)]
        command: ApiTokenCommand,
    },
    /// Workload executables, stored by the orchestrator and fetched by nodes.
    Artifact {
        #[command(subcommand)]
        command: ArtifactCommand,
    },
    /// Container images, stored by the orchestrator and fetched by nodes layer by layer.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// ONNX models the fleet routes and places with: checked, stored and sent to the nodes.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
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
    /// What nodes reported from their outboxes, oldest first by when it happened on the
    /// node (also what happened while a node was offline).
    Events {
        /// Only this node (name or id).
        #[arg(long)]
        node: Option<String>,
        /// Only what happened since: a duration back from now (`1h`, `7d`) or an RFC 3339
        /// time (`2026-12-06T14:00:00Z`).
        #[arg(long)]
        since: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long)]
        limit: Option<u32>,
        /// Then keep printing events as they arrive (also those that happened long ago on a
        /// node that was offline), until interrupted.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// What the fleet recorded to train its models on.
    Telemetry {
        #[command(subcommand)]
        command: TelemetryCommand,
    },
    /// The nodes' proxy caches.
    Cache {
        #[command(subcommand)]
        command: cache::CacheCommand,
    },
    /// Place no new instances on a node.
    Cordon {
        /// The node's name or id.
        node: String,
    },
    /// Print a completion script for a shell, e.g.
    /// `edgectl completions bash > /etc/bash_completion.d/edgectl`.
    Completions {
        /// The shell.
        shell: ShellArg,
    },
    /// Let the scheduler use a cordoned node again.
    Uncordon {
        /// The node's name or id.
        node: String,
    },
    /// Cordon a node and take its instances off it: those of a replicated workload move to
    /// other nodes that fit, those of a per-node workload stop.
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

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Upload an OCI image archive (docker save, podman save --format oci-archive, skopeo
    /// copy ... oci-archive:) and print its digest, for a workload spec's `image`.
    Push {
        /// The archive: an OCI image layout in a tar.
        path: PathBuf,
    },
    /// List the stored images and the architectures each runs on.
    List,
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Upload an ONNX model. Both the nodes' reader and tract-onnx must load it and agree on
    /// its outputs, and on its golden rows when it carries them; then it becomes the fleet's
    /// model for its purpose.
    Push {
        /// The model file (.onnx).
        path: PathBuf,
        /// What the fleet uses it for (route, place, warm); by default what the model declares.
        #[arg(long)]
        purpose: Option<String>,
    },
    /// List the stored models and which one serves each purpose.
    List,
}

#[derive(Debug, Subcommand)]
enum TelemetryCommand {
    /// Write the attempts nodes' proxies sampled (each chosen backend's routing features
    /// and how the attempt went) as the training CSV that `edge-ai/train/train.sh --data`
    /// takes, oldest first; `--json` prints the API's rows instead.
    Export {
        /// Only this node (name or id).
        #[arg(long)]
        node: Option<String>,
        /// Only windows since: a duration back from now (`1h`, `7d`) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// At most this many rows (1 to 1000000; the API's default is 100000).
        #[arg(long)]
        limit: Option<u32>,
        /// Write the CSV to this file (replaced) instead of standard output.
        #[arg(short = 'o', long)]
        out: Option<PathBuf>,
    },
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

#[derive(Debug, Subcommand)]
enum ApiTokenCommand {
    /// Issue a viewer or operator token and print it; it is shown only now. (The admin token
    /// is DATA_DIR/admin.token; `edge-orchestrator serve --rotate-admin-token` replaces it.)
    Create {
        /// What it may do: viewer reads, operator also deploys and drains.
        #[arg(long)]
        role: RoleArg,
        /// Who it is for, e.g. ci or grafana.
        #[arg(long)]
        subject: String,
        /// How long it is valid: 90s, 15m, 24h, 7d (at most 365d). The API's default is 24h.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// List the API tokens: id, role, subject, state and expiry (never the token text).
    List,
    /// Revoke a token by its id: it is refused from its next request on.
    Revoke {
        /// The token's id, from `api-token list`.
        id: String,
    },
}

/// The shells `completions` writes scripts for.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ShellArg {
    Bash,
    Zsh,
    Fish,
}

/// The roles the API issues tokens for.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Viewer,
    Operator,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Viewer => Role::Viewer,
            RoleArg::Operator => Role::Operator,
        }
    }
}

/// `--since` as milliseconds since the Unix epoch: a duration back from `now` (seconds) or
/// an RFC 3339 time.
fn since_ms(since: &str, now: u64) -> Result<u64, CliError> {
    if let Ok(secs) = orchestrator::api::time::parse_duration(since) {
        return Ok(now.saturating_sub(secs).saturating_mul(1000));
    }
    time::OffsetDateTime::parse(since, &time::format_description::well_known::Rfc3339)
        .ok()
        .and_then(|at| u64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok())
        .ok_or_else(|| CliError::Usage(format!(
            "--since {since:?} is neither a duration back from now (1h, 7d) nor an RFC 3339 time (2026-12-06T14:00:00Z)"
        )))
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The API answered with an error; the message is its own.
    #[error("{message}")]
    Api { status: u16, message: String },
    /// An argument the command cannot use; the message says which and why.
    #[error("{0}")]
    Usage(String),
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
    /// The call was answered, but some of the nodes it went to failed; `output` still says
    /// what each node did.
    #[error("{failed} of {total} nodes did not do it")]
    NotEveryNode {
        output: String,
        failed: usize,
        total: usize,
    },
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
            if let CliError::NotEveryNode { output, .. } = &e {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout
                    .write_all(output.as_bytes())
                    .and_then(|()| stdout.flush());
            }
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
    if let Command::Completions { shell } = cli.command {
        return Ok(completions(shell));
    }
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
                nodes_table(nodes, now_unix())
            })
        }
        Command::Events {
            node,
            since,
            limit,
            follow,
        } => {
            let path = node_since_limit("/v1/events", node, since, *limit)?;
            let body = client.get(&path)?;
            let shown = client.show(cli.json, &body, |events: &Vec<serde_json::Value>| {
                events_table(events)
            })?;
            if !*follow {
                return Ok(shown);
            }
            print_now(&shown)?;
            let first: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
            follow_events(&client, cli.json, node.as_deref(), &first)
        }
        Command::Node { name } => {
            let body = client.get(&format!("/v1/nodes/{}", percent_encode(name)))?;
            client.show(cli.json, &body, |node: &NodeView| {
                node_summary(node, now_unix())
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
                tokens_table(tokens, now_unix())
            })
        }
        Command::ApiToken {
            command: ApiTokenCommand::Create { role, subject, ttl },
        } => {
            let request = CreateApiTokenRequest {
                role: (*role).into(),
                subject: subject.clone(),
                ttl: ttl.clone(),
                ttl_secs: None,
            };
            let body = client.post("/v1/api-tokens", &request)?;
            client.show(cli.json, &body, api_token_created)
        }
        Command::ApiToken {
            command: ApiTokenCommand::List,
        } => {
            let body = client.get("/v1/api-tokens")?;
            client.show(cli.json, &body, |tokens: &Vec<ApiTokenView>| {
                api_tokens_table(tokens, now_unix())
            })
        }
        Command::ApiToken {
            command: ApiTokenCommand::Revoke { id },
        } => {
            client.delete(&format!("/v1/api-tokens/{}", percent_encode(id)))?;
            Ok(if cli.json {
                format!(
                    "{{\"revoked\": {}}}\n",
                    serde_json::Value::from(id.as_str())
                )
            } else {
                format!("revoked API token {id}: it is refused from its next request on\n")
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
        Command::Image {
            command: ImageCommand::Push { path },
        } => {
            let body = client.push_image(path)?;
            client.show(cli.json, &body, image_pushed)
        }
        Command::Model {
            command: ModelCommand::Push { path, purpose },
        } => {
            let body = client.push_model(path, purpose.as_deref())?;
            client.show(cli.json, &body, model_pushed)
        }
        Command::Telemetry {
            command:
                TelemetryCommand::Export {
                    node,
                    since,
                    limit,
                    out,
                },
        } => {
            let path = node_since_limit("/v1/telemetry/route-samples", node, since, *limit)?;
            let body = client.get(&path)?;
            if cli.json {
                return Ok(body);
            }
            let rows: orchestrator_core::events::RouteRows =
                serde_json::from_str(&body).map_err(|e| CliError::BadResponse {
                    api: cli.api.clone(),
                    reason: e.to_string(),
                })?;
            export_rows(&rows, out.as_deref())
        }
        Command::Model {
            command: ModelCommand::List,
        } => {
            let body = client.get("/v1/models")?;
            client.show(cli.json, &body, models_table)
        }
        Command::Image {
            command: ImageCommand::List,
        } => {
            let body = client.get("/v1/images")?;
            client.show(cli.json, &body, |images: &Vec<ImageRecord>| {
                images_table(images)
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
        // Answered above, without the API.
        Command::Completions { shell } => Ok(completions(*shell)),
        Command::Cache { command } => cache::run(&client, cli.json, command),
        Command::Cordon { node } => node_action(cli, &client, node, "cordon"),
        Command::Uncordon { node } => node_action(cli, &client, node, "uncordon"),
        Command::Drain { node } => drain(cli, &client, node),
    }
}

/// How often `edgectl events --follow` asks for what arrived.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Writes `text` to stdout at once; a closed pipe ends a follow quietly.
fn print_now(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(_) => std::process::exit(0),
    }
}

/// `edgectl events --follow`: polls for what arrived since the last answer (the
/// orchestrator's `received_since`, so that events a node sends late, with old times, show
/// too) and prints each event once, in the order it arrived.
fn follow_events(
    client: &Client,
    json: bool,
    node: Option<&str>,
    shown: &[serde_json::Value],
) -> Result<String, CliError> {
    let key = |e: &serde_json::Value| {
        (
            e["node_id"].as_str().unwrap_or_default().to_owned(),
            e["origin"].as_str().unwrap_or_default().to_owned(),
            e["seq"].as_u64().unwrap_or_default(),
        )
    };
    let received = |e: &serde_json::Value| e["received_ms"].as_u64().unwrap_or_default();
    // Arrival times are the orchestrator's, in whole seconds: ask from a second before the
    // newest seen, and skip what was printed.
    let mut cursor = shown
        .iter()
        .map(received)
        .max()
        .unwrap_or_else(|| now_unix().saturating_sub(60).saturating_mul(1000));
    let mut seen: std::collections::BTreeMap<_, u64> =
        shown.iter().map(|e| (key(e), received(e))).collect();
    loop {
        // The pace of a poll, not a wait for something that will happen.
        #[expect(clippy::disallowed_methods, reason = "the interval between two polls")]
        std::thread::sleep(FOLLOW_EVERY);
        let mut path = format!("/v1/events?received_since={}", cursor.saturating_sub(1000));
        if let Some(node) = node {
            let _ = write!(path, "&node={}", percent_encode(node));
        }
        let body = client.get(&path)?;
        let events: Vec<serde_json::Value> = client.parse(&body)?;
        let new: Vec<serde_json::Value> = events
            .into_iter()
            .filter(|e| !seen.contains_key(&key(e)))
            .collect();
        for e in &new {
            seen.insert(key(e), received(e));
            cursor = cursor.max(received(e));
        }
        seen.retain(|_, at| *at + 1000 >= cursor);
        if new.is_empty() {
            continue;
        }
        let text = if json {
            new.iter().map(|e| format!("{e}\n")).collect()
        } else {
            // The rows without the header.
            let table = events_table(&new);
            table
                .split_once('\n')
                .map_or(String::new(), |(_, rows)| rows.to_owned())
        };
        print_now(&text)?;
    }
}

/// The completion script for `shell`, from the same definition that parses the command line.
fn completions(shell: ShellArg) -> String {
    let shell = match shell {
        ShellArg::Bash => clap_complete::Shell::Bash,
        ShellArg::Zsh => clap_complete::Shell::Zsh,
        ShellArg::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "edgectl", &mut script);
    String::from_utf8_lossy(&script).into_owned()
}

/// `drain` a node, and say what became of each instance it ran: the workloads before and
/// after show where a replicated one went (or why it found no node) and that a per-node one
/// stopped.
/// `path` with the query `--node`, `--since` and `--limit` make, as far as they are given.
fn node_since_limit(
    path: &str,
    node: &Option<String>,
    since: &Option<String>,
    limit: Option<u32>,
) -> Result<String, CliError> {
    let mut query = Vec::new();
    if let Some(node) = node {
        query.push(format!("node={}", percent_encode(node)));
    }
    if let Some(since) = since {
        query.push(format!("since={}", since_ms(since, now_unix())?));
    }
    if let Some(limit) = limit {
        query.push(format!("limit={limit}"));
    }
    Ok(if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    })
}

/// `rows` as CSV: the answer itself, or written to `out` with a line that says so. What
/// was left out, or is still to fetch, goes to standard error.
fn export_rows(
    rows: &orchestrator_core::events::RouteRows,
    out: Option<&std::path::Path>,
) -> Result<String, CliError> {
    if rows.skipped > 0 {
        eprintln!(
            "edgectl: {} samples of another feature count (nodes of another version) left out",
            rows.skipped
        );
    }
    if rows.truncated {
        eprintln!(
            "edgectl: more rows than the limit: these are the oldest; raise --limit or export \
             again with a later --since"
        );
    }
    let csv = rows.to_csv();
    let Some(out) = out else {
        return Ok(csv);
    };
    std::fs::write(out, csv).map_err(|e| CliError::File {
        path: out.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(format!(
        "wrote {} attempts to {}\n",
        rows.rows.len(),
        out.display()
    ))
}

fn drain(cli: &Cli, client: &Client, node: &str) -> Result<String, CliError> {
    let before: Vec<WorkloadView> = client.parse(&client.get("/v1/workloads")?)?;
    let body = client.post(
        &format!("/v1/nodes/{}/drain", percent_encode(node)),
        &serde_json::json!({}),
    )?;
    if cli.json {
        return client.show(cli.json, &body, |_: &serde_json::Value| String::new());
    }
    let drained_node: NodeView = client.parse(&body)?;
    let after: Vec<WorkloadView> = client.parse(&client.get("/v1/workloads")?)?;
    Ok(drained(&drained_node, &before, &after))
}

/// `cordon` or `uncordon` a node.
fn node_action(cli: &Cli, client: &Client, node: &str, action: &str) -> Result<String, CliError> {
    let body = client.post(
        &format!("/v1/nodes/{}/{action}", percent_encode(node)),
        &serde_json::json!({}),
    )?;
    client.show(cli.json, &body, |n: &NodeView| match action {
        "cordon" => format!("{} cordoned: no new instances go there\n", n.name),
        _ => format!("{} uncordoned\n", n.name),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_duration_back_or_an_rfc3339_time() {
        let now = 1_765_000_000;
        assert_eq!(since_ms("1h", now).expect("ok"), (now - 3600) * 1000);
        assert_eq!(
            since_ms("2026-12-06T14:00:00Z", now).expect("ok"),
            1_796_565_600_000
        );
        for bad in ["yesterday", "", "1y", "2026-13-01T00:00:00Z"] {
            let err = since_ms(bad, now).expect_err(bad);
            assert!(err.to_string().starts_with("--since"), "{err}");
        }
    }
}
