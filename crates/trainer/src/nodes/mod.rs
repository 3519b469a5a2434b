//! Several nodes (machines, or processes) training one run data-parallel (`--nodes N`): every
//! node reads the same recipe and pairs, trains on its part of every batch, and sums each
//! step's gradients, loss and Ctrl-C with the others' ([`crate::grad_sum`]) through the
//! orchestrator (`trainer orchestrator`, [`orchestrator`]), which first checks that every node
//! came with the same recipe and data. Only rank 0 writes the run folder, the export and the
//! logs.
//!
//! Why not burn's collective across nodes: in burn-collective 0.21 a node's second global
//! all-reduce never returns (`SyncService::sync` clears a copy of its list of synced peers, not
//! the list, so the next sync waits for ever), its registration has no timeout, and it would
//! not say which node is missing. An intervention's gradients are small (a rank-16 DAS on a
//! 4096-wide site is 256 KiB a step), so a sum through one orchestrator costs little.

pub mod member;
pub mod orchestrator;
pub mod protocol;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::grad_sum::AllSum;

/// `--nodes`, `--node-rank`, `--orchestrator` and `--node-timeout`.
#[derive(Debug, Clone, Args, Default)]
pub struct NodeArgs {
    /// Train on N nodes (machines, or processes) data-parallel; pair-file kinds: start
    /// `trainer orchestrator --port P` once, then this recipe on every node with the same recipe
    /// and pairs, its own --node-rank and --orchestrator HOST:P. Each node trains on its part of
    /// every batch; the result is the one-node run's within float rounding. Rank 0 writes the
    /// run folder.
    #[arg(long, value_name = "N", conflicts_with_all = ["devices", "resume"])]
    pub nodes: Option<usize>,
    /// This node's rank, 0 to N-1 (with --nodes); rank 0 writes the run folder, export and logs.
    #[arg(long, value_name = "R", requires = "nodes")]
    pub node_rank: Option<usize>,
    /// The orchestrator every node joins (with --nodes): HOST:P of `trainer orchestrator --port P`.
    #[arg(long, value_name = "HOST:P", requires = "nodes")]
    pub orchestrator: Option<String>,
    /// Seconds to wait for every node to arrive, and at each step for the others' sums.
    #[arg(long, value_name = "SECONDS", default_value_t = 300.0, requires = "nodes")]
    pub node_timeout: f64,
}

/// A several-node run as this node takes part in it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodePlan {
    /// How many nodes.
    pub count: usize,
    /// This node's rank.
    pub rank: usize,
    /// The orchestrator's host and port.
    pub orchestrator: (String, u16),
    /// How long to wait for the others.
    pub timeout: Duration,
}

/// `HOST:PORT` (a `tcp://` or `ws://` in front is allowed): the host and the port.
fn host_port(flag: &str, value: &str) -> Result<(String, u16)> {
    let why = || format!("{flag} {value}: give HOST:PORT, as in 10.0.0.1:3000");
    let rest = value.strip_prefix("tcp://").or_else(|| value.strip_prefix("ws://")).unwrap_or(value);
    let (host, port) = rest.trim_end_matches('/').rsplit_once(':').with_context(why)?;
    let port = port.parse::<u16>().ok().filter(|&p| p > 0).with_context(why)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("{}", why());
    }
    Ok((host.to_string(), port))
}

impl NodeArgs {
    /// The plan these flags give, `None` without --nodes; every missing or wrong flag is named.
    pub fn checked(&self) -> Result<Option<NodePlan>> {
        let Some(count) = self.nodes else { return Ok(None) };
        if count < 2 {
            bail!("--nodes {count}: give two or more nodes (one node is a plain run)");
        }
        let rank = self.node_rank.with_context(|| format!("--nodes {count} needs --node-rank (0 to {})", count - 1))?;
        if rank >= count {
            bail!("--node-rank {rank} is not below --nodes {count}: ranks go from 0 to {}", count - 1);
        }
        let orchestrator = self
            .orchestrator
            .as_deref()
            .context("--nodes needs --orchestrator HOST:P (the address of `trainer orchestrator --port P`)")?;
        if !(self.node_timeout.is_finite() && self.node_timeout > 0.0) {
            bail!("--node-timeout {}: give a positive number of seconds", self.node_timeout);
        }
        Ok(Some(NodePlan {
            count,
            rank,
            orchestrator: host_port("--orchestrator", orchestrator)?,
            timeout: Duration::from_secs_f64(self.node_timeout),
        }))
    }
}

impl NodePlan {
    /// Whether this node writes the run folder, the export and the logs.
    pub fn writes(&self) -> bool {
        self.rank == 0
    }

    /// How report.json describes the run's nodes.
    pub fn report(&self) -> Value {
        json!({"count": self.count, "orchestrator": format!("{}:{}", self.orchestrator.0, self.orchestrator.1)})
    }
}

/// This node, joined to the run: its rank and its sum with the others.
pub struct Joined {
    /// The plan it joined with.
    pub plan: NodePlan,
    /// Sums each step with the other nodes.
    pub sum: Box<dyn AllSum>,
}

/// Joins the run of `plan`: the roll call (every node, the same `fingerprint`) within the
/// plan's timeout.
pub fn join(plan: &NodePlan, fingerprint: &str) -> Result<Joined> {
    let (host, port) = &plan.orchestrator;
    let hello = protocol::Hello { rank: plan.rank, nodes: plan.count, fingerprint: fingerprint.to_string() };
    eprintln!("node {} of {}: waiting for every node at {host}:{port}", plan.rank, plan.count);
    let sum = member::attend(host, *port, &hello, plan.timeout)?;
    Ok(Joined { plan: plan.clone(), sum: Box::new(sum) })
}

/// `trainer orchestrator --port P`: gathers and sums several-node runs on port P until stopped.
pub fn serve_orchestrator(port: u16) -> Result<()> {
    let listener = std::net::TcpListener::bind(("0.0.0.0", port))
        .with_context(|| format!("listening on port {port}: is it free? Choose another --port"))?;
    eprintln!(
        "orchestrator: listening on port {port}; nodes join with --orchestrator THIS_HOST:{port}. Ctrl-C stops it."
    );
    orchestrator::serve(listener);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_flags_are_checked_and_named() {
        let args = |n: Option<usize>, r: Option<usize>, o: Option<&str>| NodeArgs {
            nodes: n,
            node_rank: r,
            orchestrator: o.map(str::to_string),
            node_timeout: 30.0,
        };
        assert_eq!(args(None, None, None).checked().unwrap(), None);
        let err = |a: NodeArgs| a.checked().unwrap_err().to_string();
        assert!(err(args(Some(1), Some(0), None)).contains("two or more"));
        assert!(err(args(Some(2), None, None)).contains("needs --node-rank"));
        assert!(err(args(Some(2), Some(2), None)).contains("--node-rank 2 is not below --nodes 2"));
        assert!(err(args(Some(2), Some(0), None)).contains("--orchestrator"));
        let e = err(args(Some(2), Some(0), Some("h")));
        assert!(e.contains("--orchestrator h: give HOST:PORT"), "{e}");
        let plan = args(Some(2), Some(1), Some("ws://10.0.0.1:3000/")).checked().unwrap().unwrap();
        assert_eq!((plan.rank, plan.orchestrator.clone()), (1, ("10.0.0.1".into(), 3000)));
        assert!(!plan.writes());
        let plan = args(Some(3), Some(0), Some("[::1]:3001")).checked().unwrap().unwrap();
        assert_eq!(plan.orchestrator, ("::1".into(), 3001));
        assert!(plan.writes());
    }
}
