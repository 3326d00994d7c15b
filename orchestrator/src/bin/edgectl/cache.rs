//! `edgectl cache purge`: removes cached responses from the nodes' proxies through
//! `POST /v1/cache/purge`, and says what each node did, one line a node.

use clap::{Args, Subcommand};
use orchestrator_core::purge::{PurgeAnswer, PurgeBody};
use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::CliError;
use crate::client::Client;

#[derive(Debug, Subcommand)]
pub(crate) enum CacheCommand {
    /// Remove cached responses from the nodes' proxies: one (--host and --path) or every one
    /// under a prefix (--prefix, --host optional), on one node, the nodes a selector picks,
    /// or the whole fleet. Exits 1 if any node was not purged (offline, no proxy, no answer).
    Purge(PurgeArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["path", "prefix"])))]
pub(crate) struct PurgeArgs {
    /// The host the responses were cached for (no port); needed with --path.
    #[arg(long)]
    host: Option<String>,
    /// One response: its path and query as requested, e.g. /menu.json?lang=de.
    #[arg(long)]
    path: Option<String>,
    /// Every response whose path starts with this, e.g. /img/.
    #[arg(long)]
    prefix: Option<String>,
    /// Only this node (name or id).
    #[arg(long, conflicts_with = "selector")]
    node: Option<String>,
    /// Only the nodes with all these labels: key=value[,key=value...].
    #[arg(long, value_parser = parse_selector)]
    selector: Option<BTreeMap<String, String>>,
}

/// `site=berlin,tier=shop` as a map; a pair without `=` or a key given twice is refused.
fn parse_selector(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',') {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("{pair:?} is not key=value"));
        };
        if labels.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(format!("the label {key:?} is given twice"));
        }
    }
    Ok(labels)
}

/// Runs `cache` COMMAND; returns what to print.
pub(crate) fn run(client: &Client, json: bool, command: &CacheCommand) -> Result<String, CliError> {
    let CacheCommand::Purge(args) = command;
    let body = PurgeBody {
        host: args.host.clone(),
        path: args.path.clone(),
        path_prefix: args.prefix.clone(),
        node: args.node.clone(),
        selector: args.selector.clone(),
    };
    let answer = client.post("/v1/cache/purge", &body)?;
    let parsed: PurgeAnswer = client.parse(&answer)?;
    let output = client.show(json, &answer, purged)?;
    let failed = parsed.nodes.iter().filter(|n| n.error.is_some()).count();
    if failed > 0 {
        return Err(CliError::NotEveryNode {
            output,
            failed,
            total: parsed.nodes.len(),
        });
    }
    Ok(output)
}

/// One line a node: how many responses it removed, or why it did not.
fn purged(answer: &PurgeAnswer) -> String {
    if answer.nodes.is_empty() {
        return "no node matched: nothing purged\n".to_owned();
    }
    let width = answer
        .nodes
        .iter()
        .map(|n| n.node.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for n in &answer.nodes {
        let what = match (&n.purged, &n.error) {
            (_, Some(error)) => format!("not purged: {error}"),
            (Some(1), None) => "purged 1 response".to_owned(),
            (Some(count), None) => format!("purged {count} responses"),
            (None, None) => "no answer".to_owned(),
        };
        let _ = writeln!(out, "{:<width$}  {what}", n.node);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator_core::purge::NodePurge;

    #[test]
    fn selectors_are_key_value_pairs() {
        let s = parse_selector("site=berlin,tier=shop").expect("valid");
        assert_eq!(s["site"], "berlin");
        assert_eq!(s["tier"], "shop");
        assert!(parse_selector("site").is_err());
        assert!(parse_selector("a=1,a=2").is_err());
    }

    #[test]
    fn one_line_a_node() {
        let answer = PurgeAnswer {
            nodes: vec![
                NodePurge {
                    node: "n1".into(),
                    purged: Some(1),
                    error: None,
                },
                NodePurge {
                    node: "node-2".into(),
                    purged: None,
                    error: Some("offline".into()),
                },
            ],
            purged: 1,
        };
        assert_eq!(
            purged(&answer),
            "n1      purged 1 response\nnode-2  not purged: offline\n"
        );
    }
}
