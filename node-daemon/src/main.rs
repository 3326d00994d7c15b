//! `edge-node`: the node daemon.

use anyhow::Context;
use node_daemon::config::{
    Config, ConfigFile, FromFile, GeoPoint, JoinSettings, Liveness, OrchestratorAddress,
};
use node_daemon::ctl;
use node_daemon::notify::Notifier;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
// Links the faster `memcpy` in place of musl's own (see edge-memcpy).
#[cfg(all(target_arch = "x86_64", target_env = "musl"))]
use edge_memcpy as _;

const USAGE: &str = "\
Edge node daemon

Usage: edge-node run --config FILE
       edge-node check-config --config FILE
       edge-node ctl --config FILE [--json] ACTION

  run            enroll on first start, then keep a session with the orchestrator
  check-config   check a config file and print what the node would use
  ctl            control the running node over its local socket (works with no uplink):
                   status | workloads | outbox | logs WORKLOAD [--lines N]
                   | restart WORKLOAD | stop WORKLOAD

Options:
  -c, --config FILE   the node's TOML config file
  -h, --help          print this help
  -V, --version       print the version
";

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Command {
    /// Run the node: enroll on first start, then keep a session with the orchestrator.
    Run {
        config: PathBuf,
    },
    /// Check a config file and print a summary of what the node would use.
    CheckConfig {
        config: PathBuf,
    },
    /// Ask the running node something over its control socket.
    Ctl {
        config: PathBuf,
        request: ctl::Request,
        json: bool,
    },
    Help,
    Version,
}

/// Reads the command line. Errors say what was wrong; `main` adds the usage.
fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Command, lexopt::Error> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_iter(std::iter::once("edge-node".into()).chain(args));
    let mut command: Option<String> = None;
    let mut config: Option<PathBuf> = None;
    let mut json = false;
    let mut lines: Option<u32> = None;
    let mut words: Vec<String> = Vec::new();
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Short('c') | Long("config") => config = Some(parser.value()?.into()),
            Long("json") if command.as_deref() == Some("ctl") => json = true,
            Long("lines") if command.as_deref() == Some("ctl") => {
                lines = Some(parser.value()?.parse()?)
            }
            Value(value) if command.is_none() => command = Some(value.string()?),
            Value(value) if command.as_deref() == Some("ctl") && words.len() < 2 => {
                words.push(value.string()?)
            }
            _ => return Err(arg.unexpected()),
        }
    }
    let Some(command) = command else {
        return Err("a command is required: run, check-config or ctl".into());
    };
    let config = || {
        config
            .clone()
            .ok_or_else(|| lexopt::Error::from("--config FILE is required"))
    };
    match command.as_str() {
        "run" => Ok(Command::Run { config: config()? }),
        "check-config" => Ok(Command::CheckConfig { config: config()? }),
        "ctl" => {
            let request = ctl::Request::from_words(&words, lines).map_err(lexopt::Error::from)?;
            Ok(Command::Ctl {
                config: config()?,
                request,
                json,
            })
        }
        other => Err(format!("unknown command {other:?}: run, check-config or ctl").into()),
    }
}

fn main() -> ExitCode {
    let command = match parse(std::env::args_os().skip(1)) {
        Ok(Command::Help) => {
            let _ = std::io::stdout().write_all(USAGE.as_bytes());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            let _ = writeln!(std::io::stdout(), "edge-node {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Ok(command) => command,
        Err(e) => {
            let _ = write!(std::io::stderr(), "edge-node: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    edge_shell::logging::init();
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed stderr loses the message; it must not turn the error into a panic.
            let _ = writeln!(std::io::stderr(), "edge-node: {}", Chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, `what: why: why`, each cause written once. Most of
/// the node's errors already quote their cause in their own message (`cannot read config
/// file F: No such file or directory`) and also return it as their source, so a cause the
/// text so far already ends with is left out.
struct Chain<'a>(&'a anyhow::Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = String::new();
        for cause in self.0.chain() {
            let cause = cause.to_string();
            if text.is_empty() {
                text = cause;
            } else if !text.ends_with(&cause) {
                text.push_str(": ");
                text.push_str(&cause);
            }
        }
        // A TOML parse error ends with a newline of its own.
        f.write_str(text.trim_end())
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::CheckConfig { config: path } => {
            let file = ConfigFile::load(&path)?;
            // `check-config | head` is no reason to panic.
            let print = |summary: Summary| {
                let _ = write!(
                    std::io::stdout().lock(),
                    "{} is valid.\n{summary}",
                    path.display()
                );
            };
            match file.complete(None) {
                Ok(config) => print(Summary::of_config(&config)),
                // Valid, with the rest to come from a join file on first start.
                Err(_) if !file.join_files().is_empty() => print(Summary::of_file(&file)),
                Err(e) => return Err(e.into()),
            }
            Ok(())
        }
        Command::Ctl {
            config,
            request,
            json,
        } => {
            let file = ConfigFile::load(&config)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let answer = runtime.block_on(ctl::call(&file.ctl().socket, &request))?;
            let text = if json {
                format!("{answer:#}\n")
            } else {
                ctl::render(&request, &answer)
            };
            // `ctl logs | head` is no reason to panic.
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            Ok(())
        }
        Command::Help | Command::Version => Ok(()),
        Command::Run { config } => {
            let config = ConfigFile::load(&config)?;
            // One worker thread: the node is I/O-bound and runs on 512 MB boards.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(async {
                // Before anything is said to be ready: a signal from then on is not lost.
                let shutdown = edge_shell::shutdown::Shutdown::listen();
                node_daemon::service::run(config, Notifier::from_env(), shutdown.wait()).await
            })?;
            Ok(())
        }
    }
}

/// What `check-config` tells the operator: what the node will use, without the join token's
/// secret. A value the file leaves to a join file says so.
struct Summary<'a> {
    name: Option<&'a str>,
    orchestrator: Option<&'a OrchestratorAddress>,
    local_address: Option<IpAddr>,
    data_dir: &'a Path,
    labels: Option<&'a BTreeMap<String, String>>,
    location: Option<GeoPoint>,
    status_listen: Option<SocketAddr>,
    liveness: Liveness,
    status_interval: Duration,
    join: Option<&'a JoinSettings>,
    join_files: &'a [PathBuf],
}

impl<'a> Summary<'a> {
    fn of_config(c: &'a Config) -> Self {
        Self {
            name: Some(c.name()),
            orchestrator: Some(c.orchestrator()),
            local_address: c.local_address(),
            data_dir: c.data_dir(),
            labels: Some(c.labels()),
            location: c.location(),
            status_listen: c.status_listen(),
            liveness: c.liveness(),
            status_interval: c.status_interval(),
            join: c.join(),
            join_files: &[],
        }
    }

    fn of_file(f: &'a ConfigFile) -> Self {
        Self {
            name: f.name(),
            orchestrator: f.orchestrator(),
            local_address: f.local_address(),
            data_dir: f.data_dir(),
            labels: f.labels(),
            location: f.location(),
            status_listen: f.status_listen(),
            liveness: f.liveness(),
            status_interval: f.status_interval(),
            join: f.join(),
            join_files: f.join_files(),
        }
    }
}

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only an incomplete file has join files to fill its gaps.
        let unset = if self.join_files.is_empty() {
            "none"
        } else {
            "from the join file"
        };
        let line = |f: &mut fmt::Formatter<'_>, key: &str, value: &dyn fmt::Display| {
            writeln!(f, "  {key:<14} {value}")
        };
        line(f, "name", &self.name.unwrap_or(unset))?;
        match self.orchestrator {
            Some(o) => line(f, "orchestrator", o)?,
            None => line(f, "orchestrator", &unset)?,
        }
        if let Some(ip) = self.local_address {
            line(f, "local_address", &ip)?;
        }
        line(f, "data_dir", &self.data_dir.display())?;
        match self.labels {
            Some(labels) if !labels.is_empty() => {
                let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                line(f, "labels", &labels.join(", "))?;
            }
            Some(_) => line(f, "labels", &"none")?,
            None => line(f, "labels", &unset)?,
        }
        match self.location {
            Some(GeoPoint { lat, lon, alt_m }) => {
                let alt = alt_m.map(|m| format!(", {m} m")).unwrap_or_default();
                line(f, "location", &format_args!("{lat}, {lon}{alt}"))?;
            }
            None => line(f, "location", &unset)?,
        }
        if let Some(addr) = self.status_listen {
            line(f, "status_listen", &addr)?;
        }
        let profile = match self.liveness {
            Liveness::FAST => "fast, ",
            Liveness::METERED => "metered, ",
            _ => "",
        };
        line(
            f,
            "liveness",
            &format_args!(
                "{profile}keep-alive every {} s, offline after {} s without a packet; status every {} s",
                self.liveness.keep_alive.as_secs(),
                self.liveness.idle_timeout.as_secs(),
                self.status_interval.as_secs()
            ),
        )?;
        match self.join {
            Some(j) => line(
                f,
                "join",
                &format_args!("present (token {}.***, CA {})", j.token.id(), j.ca_hash),
            )?,
            None if self.join_files.is_empty() => line(f, "join", &"absent")?,
            None => line(f, "join", &unset)?,
        }
        if !self.join_files.is_empty() {
            let files: Vec<String> = self
                .join_files
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            line(f, "join_file", &files.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Result<Command, String> {
        parse(args.iter().map(std::ffi::OsString::from)).map_err(|e| e.to_string())
    }

    #[test]
    fn each_command_reads_its_arguments() {
        assert_eq!(
            parsed(&["run", "--config", "/etc/edge-node.toml"]),
            Ok(Command::Run {
                config: "/etc/edge-node.toml".into()
            })
        );
        assert_eq!(
            parsed(&["check-config", "-c", "n.toml"]),
            Ok(Command::CheckConfig {
                config: "n.toml".into()
            })
        );
        assert_eq!(
            parsed(&[
                "ctl",
                "--config=n.toml",
                "logs",
                "till",
                "--lines",
                "20",
                "--json"
            ]),
            Ok(Command::Ctl {
                config: "n.toml".into(),
                request: ctl::Request::Logs {
                    workload: "till".into(),
                    lines: 20
                },
                json: true,
            })
        );
        assert_eq!(parsed(&["--help"]), Ok(Command::Help));
        assert_eq!(parsed(&["run", "-V"]), Ok(Command::Version));
    }

    #[test]
    fn a_wrong_command_line_says_what_is_wrong() {
        for (args, says) in [
            (&[][..], "a command is required"),
            (&["run"], "--config FILE is required"),
            (&["serve", "-c", "x"], "unknown command"),
            (&["run", "-c", "x", "extra"], "extra"),
            (&["run", "-c", "x", "--json"], "--json"),
            (&["ctl", "-c", "x"], "ctl needs an ACTION"),
            (&["ctl", "-c", "x", "restart"], "needs a WORKLOAD"),
            (&["ctl", "-c", "x", "logs", "w", "--lines", "many"], "many"),
            (&["run", "--config"], "--config"),
        ] {
            let error = parsed(args).expect_err("refused");
            assert!(error.contains(says), "{args:?}: {error}");
        }
    }
}
