//! A node's side of a several-node run: it answers the orchestrator's roll call, then sums
//! every training step through it ([`NodeSum`]). Every wait is bounded by `--node-timeout`, and
//! every error says which node or rank is at fault and what to do.

use std::cell::{Cell, RefCell};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::protocol::{Frame, Hello, Reply};
use crate::grad_sum::AllSum;

/// Sums steps with the other nodes through the orchestrator.
pub struct NodeSum {
    stream: RefCell<TcpStream>,
    /// Steps summed so far.
    steps: Cell<u64>,
    timeout: Duration,
    orchestrator: String,
}

/// Answers the roll call at `host:port` as `hello` and waits, at most `timeout`, for every
/// node; an error names the ranks that did not arrive, the node whose recipe differs, or an
/// orchestrator that cannot be reached.
pub fn attend(host: &str, port: u16, hello: &Hello, timeout: Duration) -> Result<NodeSum> {
    let deadline = Instant::now() + timeout;
    let stream = loop {
        match TcpStream::connect((host, port)) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => bail!(
                "the orchestrator at {host}:{port} cannot be reached ({e}) after {:.0} s: start it there with \
                 `trainer orchestrator --port {port}`, or fix --orchestrator",
                timeout.as_secs_f64()
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    };
    stream.set_nodelay(true)?;
    let mut out = stream.try_clone()?;
    writeln!(out, "{}", serde_json::to_string(hello)?)?;
    let mut lines = BufReader::new(stream);
    let mut arrived: Vec<usize> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let missing: Vec<usize> = (0..hello.nodes).filter(|r| !arrived.contains(r)).collect();
            let one = missing.len() == 1;
            bail!(
                "not every node arrived within {:.0} s (--node-timeout): ranks {arrived:?} of {} arrived, rank{} {missing:?} \
                 missing; start {} with the same recipe and --orchestrator",
                timeout.as_secs_f64(),
                hello.nodes,
                if one { "" } else { "s" },
                if one { "it" } else { "them" }
            );
        }
        lines.get_ref().set_read_timeout(Some(left))?;
        let mut line = String::new();
        match lines.read_line(&mut line) {
            Ok(0) => bail!("the orchestrator at {host}:{port} closed the roll call (was it stopped?)"),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e).with_context(|| format!("the roll call at {host}:{port}")),
        }
        match serde_json::from_str::<Reply>(&line).with_context(|| format!("a roll call reply from {host}:{port}"))? {
            Reply::Arrived { ranks } => arrived = ranks,
            Reply::Ready => break,
            Reply::Refused { why } => bail!("the run cannot start: {why}"),
        }
    }
    // Nothing follows Ready until this node sends its first step: the reader holds no more.
    debug_assert!(lines.buffer().is_empty());
    Ok(NodeSum {
        stream: RefCell::new(lines.into_inner()),
        steps: Cell::new(0),
        timeout,
        orchestrator: format!("{host}:{port}"),
    })
}

impl AllSum for NodeSum {
    fn all_sum(&self, values: Vec<f32>) -> Result<Vec<f32>> {
        let step = self.steps.get() + 1;
        self.steps.set(step);
        let mut stream = self.stream.borrow_mut();
        let lost = |what: &str| format!("{what} the orchestrator at {} at step {step}", self.orchestrator);
        Frame::Values { step, values }.write(&mut *stream).with_context(|| lost("sending to"))?;
        stream.set_read_timeout(Some(self.timeout))?;
        let frame = match Frame::read(&mut *stream) {
            Ok(frame) => frame,
            Err(e) => {
                let waited = e
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|e| matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
                if waited {
                    bail!(
                        "no sum from the other nodes within {:.0} s at step {step} (--node-timeout): a node is stuck or \
                         much slower; see the other nodes' output",
                        self.timeout.as_secs_f64()
                    );
                }
                return Err(e.context(lost("reading from")));
            }
        };
        match frame {
            Some(Frame::Values { step: k, values }) if k == step => Ok(values),
            Some(Frame::Values { step: k, .. }) => {
                bail!("{}: the sum of step {k} came instead", lost("out of step with"))
            }
            Some(Frame::Failed(why)) => bail!("the run stopped at step {step}: {why}"),
            None => bail!("{} (was it stopped?)", lost("lost")),
        }
    }
}
