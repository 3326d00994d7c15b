//! The operator's tools as a test drives them: `edgectl`, node config files, `edge-node run`.

use crate::{Proc, binary, line_with, spawn_reading_stderr};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc::Receiver;

impl Edgectl {
    /// `edgectl` for the orchestrator whose data dir is `orch_dir`, with its admin token.
    pub fn admin(api: &str, orch_dir: &Path) -> Self {
        Self {
            api: api.to_owned(),
            token: std::fs::read_to_string(orch_dir.join("admin.token"))
                .expect("the admin token")
                .trim()
                .to_owned(),
        }
    }
}

/// `edgectl` against one orchestrator's API.
#[derive(Debug)]
pub struct Edgectl {
    pub api: String,
    pub token: String,
}

impl Edgectl {
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(binary("edgectl"))
            .args(["--api", &self.api, "--token", &self.token])
            .args(args)
            .output()
            .expect("edgectl runs")
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "edgectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("edgectl --json prints JSON")
    }

    pub fn status_of(&self, name: &str) -> Option<String> {
        let out = self.run(&["node", name, "--json"]);
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["status"].as_str().map(str::to_owned)
    }
}

/// Writes the config file of a node `name` under `dir`, joining with `join` (from `edgectl
/// token create --json`), with `extra` TOML at the top level.
pub fn node_config(
    dir: &Path,
    name: &str,
    extra: &str,
    quic: &str,
    join: &serde_json::Value,
) -> std::path::PathBuf {
    let node_dir = dir.join(name);
    std::fs::create_dir_all(&node_dir).expect("node dir");
    let config = node_dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\nname = \"{name}\"\ndata_dir = \"{}\"\n{extra}\n\
             [orchestrator]\naddress = \"{quic}\"\n\
             [join]\ntoken = \"{}\"\nca_hash = \"{}\"\n",
            node_dir.join("data").display(),
            join["token"].as_str().expect("token"),
            join["ca_hash"].as_str().expect("ca_hash"),
        ),
    )
    .expect("write config");
    config
}

/// `edge-node run --config CONFIG`.
pub fn run_node(config: &Path) -> Proc {
    Proc(
        Command::new(binary("edge-node"))
            .args(["run", "--config"])
            .arg(config)
            .env("EDGE_LOG", "warn")
            .spawn()
            .expect("node starts"),
    )
}

/// `edge-node run --config CONFIG` at `EDGE_LOG=info` for a config with a `[proxy]`: the
/// node, the lines it logs after the proxy's (keep them: the node's stderr is read into
/// them), and the address its proxy listens on, from its `proxy listening addr=...` line.
pub fn run_proxy_node(config: &Path) -> (Proc, Receiver<String>, SocketAddr) {
    let mut run = Command::new(binary("edge-node"));
    run.args(["run", "--config"])
        .arg(config)
        .env("EDGE_LOG", "info");
    let (node, lines) = spawn_reading_stderr(run);
    // "... proxy listening addr=127.0.0.1:P"
    let listening = line_with(&lines, "proxy listening");
    let proxy: SocketAddr = listening
        .split("addr=")
        .nth(1)
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("the proxy's address in {listening:?}"));
    (node, lines, proxy)
}
