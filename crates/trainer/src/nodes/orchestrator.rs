//! `trainer orchestrator`: gathers the nodes of a run (the roll call) and sums their steps.
//!
//! The roll call checks that every node arrived with the same node count and the same recipe
//! and data, and tells a waiting node which ranks are here, so that a node that gives up can say
//! which are missing. Once all have arrived, each training step every node sends its values and
//! the orchestrator sends each the sum, added in rank order so that every node gets the same
//! bits whatever order the values came in. A node that leaves mid-run, or sends values of
//! another length, stops the run on every node with a message that names it.
//!
//! One thread per node connection; runs are gathered one after another (a node that arrives
//! while a run trains starts the next roll call).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

use super::protocol::{Frame, Hello, Reply};

/// The nodes of the run being gathered.
#[derive(Default)]
struct Gathering {
    /// The node count the first node gave.
    nodes: usize,
    /// The nodes here, by rank.
    arrived: BTreeMap<usize, Hello>,
    /// Counts the roll calls; a node waits for the end of its own.
    round: u64,
    /// How the rounds ended, with the sums of those that start training (removed when the last
    /// node of the run is gone).
    ended: BTreeMap<u64, (Reply, Option<Arc<Sums>>)>,
}

impl Gathering {
    /// Takes `hello` into the current round; the round it joined, or why it is refused alone.
    fn arrive(&mut self, hello: Hello) -> std::result::Result<u64, String> {
        if self.arrived.is_empty() {
            self.nodes = hello.nodes;
        }
        if hello.nodes != self.nodes {
            return Err(format!(
                "rank {} says --nodes {}, but the nodes already here say --nodes {}; give every node the same --nodes",
                hello.rank, hello.nodes, self.nodes
            ));
        }
        if hello.rank >= hello.nodes {
            return Err(format!(
                "--node-rank {} is not below --nodes {}: ranks go from 0 to {}",
                hello.rank,
                hello.nodes,
                hello.nodes - 1
            ));
        }
        if self.arrived.contains_key(&hello.rank) {
            return Err(format!("rank {} has already arrived; every node needs its own --node-rank", hello.rank));
        }
        let round = self.round;
        if let Some(first) = self.arrived.values().find(|h| h.fingerprint != hello.fingerprint) {
            let why = format!(
                "rank {}'s recipe and data (fingerprint {}) differ from rank {}'s ({}): every node must run the same recipe \
                 with the same --set, --seed and pair files",
                hello.rank, hello.fingerprint, first.rank, first.fingerprint
            );
            self.end(Reply::Refused { why });
            return Ok(round);
        }
        self.arrived.insert(hello.rank, hello);
        if self.arrived.len() == self.nodes {
            let sums = Arc::new(Sums::new(self.nodes));
            self.ended.insert(self.round, (Reply::Ready, Some(sums)));
            self.round += 1;
            self.arrived.clear();
        }
        Ok(round)
    }

    /// Ends the current round with `reply` for everyone in it.
    fn end(&mut self, reply: Reply) {
        self.ended.insert(self.round, (reply, None));
        self.round += 1;
        self.arrived.clear();
    }
}

/// The steps of one training run: each node's values of the current step, then their sum.
struct Sums {
    state: Mutex<SumState>,
    changed: Condvar,
}

/// Where a run's current step stands.
struct SumState {
    nodes: usize,
    /// The values of the current step so far, by rank.
    pending: BTreeMap<usize, Vec<f32>>,
    /// The last step summed, and its sum.
    summed: Option<(u64, Arc<Vec<f32>>)>,
    /// Why the run stopped, once it has.
    failed: Option<String>,
    /// Ranks whose connection has closed.
    gone: Vec<usize>,
}

impl Sums {
    fn new(nodes: usize) -> Self {
        let state = SumState { nodes, pending: BTreeMap::new(), summed: None, failed: None, gone: Vec::new() };
        Sums { state: Mutex::new(state), changed: Condvar::new() }
    }

    fn lock(&self) -> Result<MutexGuard<'_, SumState>> {
        self.state.lock().map_err(|_| anyhow!("the orchestrator's state is poisoned"))
    }

    /// Adds node `rank`'s values of `step`; waits for the sum (or the run's failure).
    fn add(&self, rank: usize, step: u64, values: Vec<f32>) -> Result<std::result::Result<Arc<Vec<f32>>, String>> {
        let mut s = self.lock()?;
        if let Some(first) = s.gone.first() {
            let why = format!("node {first} left the run before step {step}");
            s.failed.get_or_insert(why);
        }
        if let Some((&other, theirs)) = s.pending.iter().next()
            && theirs.len() != values.len()
        {
            let why = format!(
                "node {rank} sent {} values at step {step}, node {other} {}: the nodes train different things",
                values.len(),
                theirs.len()
            );
            s.failed.get_or_insert(why);
        }
        if s.failed.is_none() {
            s.pending.insert(rank, values);
            if s.pending.len() == s.nodes {
                // In rank order: every node gets the same bits.
                let mut parts = std::mem::take(&mut s.pending).into_values();
                let mut sum = parts.next().unwrap_or_default();
                for part in parts {
                    sum.iter_mut().zip(&part).for_each(|(a, b)| *a += b);
                }
                s.summed = Some((step, Arc::new(sum)));
            }
        }
        self.changed.notify_all();
        loop {
            if let Some(why) = &s.failed {
                return Ok(Err(why.clone()));
            }
            if let Some((done, sum)) = &s.summed
                && *done == step
            {
                return Ok(Ok(Arc::clone(sum)));
            }
            s = self.changed.wait(s).map_err(|_| anyhow!("the orchestrator's state is poisoned"))?;
        }
    }

    /// Node `rank` closed its connection: a run with a node waiting for it fails. Whether it
    /// was the last node of the run.
    fn leave(&self, rank: usize) -> Result<bool> {
        let mut s = self.lock()?;
        s.gone.push(rank);
        if !s.pending.is_empty() && !s.pending.contains_key(&rank) {
            let steps = s.summed.as_ref().map_or(0, |(k, _)| *k);
            s.failed.get_or_insert(format!("node {rank} left the run after step {steps} (see its output)"));
        }
        self.changed.notify_all();
        Ok(s.gone.len() == s.nodes)
    }
}

/// Serves runs on `listener` until the process ends.
pub fn serve(listener: TcpListener) {
    let state = Arc::new((Mutex::new(Gathering::default()), Condvar::new()));
    for stream in listener.incoming().flatten() {
        let state = Arc::clone(&state);
        std::thread::spawn(move || {
            let peer = stream.peer_addr().map_or_else(|_| "?".into(), |a| a.to_string());
            if let Err(e) = attend_to(stream, &state) {
                eprintln!("orchestrator: the node at {peer}: {e:#}");
            }
        });
    }
}

/// Whether the node at the other end of `stream` has closed it (it stopped waiting).
fn gone(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    let _ = stream.set_nonblocking(true);
    let peeked = stream.peek(&mut byte);
    let _ = stream.set_nonblocking(false);
    match peeked {
        Ok(n) => n == 0,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// One node's connection: its roll call, then its steps.
fn attend_to(stream: TcpStream, state: &(Mutex<Gathering>, Condvar)) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let peer = stream.peer_addr().map_or_else(|_| "?".into(), |a| a.to_string());
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let hello: Hello = serde_json::from_str(&line)
        .with_context(|| format!("a first line that is not a ferrovene node's: {line:?}"))?;
    let mut out = stream;
    let send = |out: &mut TcpStream, reply: &Reply| -> std::io::Result<()> {
        writeln!(out, "{}", serde_json::to_string(reply).unwrap_or_default())
    };
    let poisoned = || anyhow!("the orchestrator's state is poisoned");
    let (lock, changed) = state;
    let mut g = lock.lock().map_err(|_| poisoned())?;
    let round = match g.arrive(hello.clone()) {
        Ok(round) => round,
        Err(why) => return Ok(send(&mut out, &Reply::Refused { why })?),
    };
    eprintln!("orchestrator: rank {} of {} arrived from {peer}", hello.rank, hello.nodes);
    changed.notify_all();
    let sums = loop {
        if let Some((reply, sums)) = g.ended.get(&round) {
            let (reply, sums) = (reply.clone(), sums.clone());
            drop(g);
            send(&mut out, &reply)?;
            match sums {
                Some(sums) => break sums,
                None => return Ok(()),
            }
        }
        let ranks = g.arrived.keys().copied().collect();
        drop(g);
        if gone(&out) || send(&mut out, &Reply::Arrived { ranks }).is_err() {
            let mut g = lock.lock().map_err(|_| poisoned())?;
            if g.round == round && g.arrived.get(&hello.rank) == Some(&hello) {
                g.arrived.remove(&hello.rank);
                eprintln!("orchestrator: rank {} left before every node arrived", hello.rank);
            }
            return Ok(());
        }
        g = lock.lock().map_err(|_| poisoned())?;
        g = changed.wait_timeout(g, Duration::from_millis(250)).map_err(|_| poisoned())?.0;
    };
    if hello.rank == 0 {
        eprintln!("orchestrator: all {} nodes here; training", hello.nodes);
    }
    let result = sum_steps(hello.rank, &mut reader, &mut out, &sums);
    if sums.leave(hello.rank)? {
        // The last node of the run to leave forgets it.
        lock.lock().map_err(|_| poisoned())?.ended.remove(&round);
        eprintln!("orchestrator: the run of {} nodes is over", hello.nodes);
    }
    result
}

/// Node `rank`'s steps: its values in, the sums out, until it closes the connection.
fn sum_steps(rank: usize, reader: &mut impl std::io::Read, out: &mut TcpStream, sums: &Sums) -> Result<()> {
    out.set_read_timeout(None)?;
    loop {
        let frame = match Frame::read(reader) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => return Err(e.context(format!("reading node {rank}'s step"))),
        };
        let Frame::Values { step, values } = frame else { return Ok(()) };
        let reply = match sums.add(rank, step, values)? {
            Ok(sum) => Frame::Values { step, values: sum.to_vec() },
            Err(why) => Frame::Failed(why),
        };
        reply.write(out)?;
    }
}

#[cfg(test)]
mod tests {
    use super::super::member::attend;
    use super::*;
    use crate::grad_sum::AllSum;

    fn hello(rank: usize, fingerprint: &str) -> Hello {
        Hello { rank, nodes: 2, fingerprint: fingerprint.into() }
    }

    fn orchestrator() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || serve(listener));
        port
    }

    const LONG: Duration = Duration::from_secs(20);

    /// Two nodes gather and sum; a missing node, a duplicate rank and another fingerprint are
    /// named.
    #[test]
    fn a_roll_call_names_who_is_missing_or_different() {
        let port = orchestrator();
        let e = attend("127.0.0.1", port, &hello(0, "a"), Duration::from_millis(1500)).err().unwrap().to_string();
        assert!(e.contains("ranks [0] of 2 arrived, rank [1] missing"), "{e}");
        std::thread::sleep(Duration::from_millis(600)); // the orchestrator sees it leave
        // Another recipe on rank 1: both refused, naming it.
        let other = std::thread::spawn(move || attend("127.0.0.1", port, &hello(1, "b"), LONG).map(|_| ()));
        std::thread::sleep(Duration::from_millis(200));
        let e0 = attend("127.0.0.1", port, &hello(0, "a"), LONG).err().unwrap().to_string();
        let e1 = other.join().unwrap().unwrap_err().to_string();
        for e in [&e0, &e1] {
            assert!(e.contains("rank 0's recipe and data (fingerprint a) differ from rank 1's (b)"), "{e}");
        }
        // The same rank twice.
        let first =
            std::thread::spawn(move || attend("127.0.0.1", port, &hello(1, "a"), Duration::from_secs(3)).map(|_| ()));
        std::thread::sleep(Duration::from_millis(300));
        let e = attend("127.0.0.1", port, &hello(1, "a"), Duration::from_secs(3)).err().unwrap().to_string();
        assert!(e.contains("rank 1 has already arrived"), "{e}");
        assert!(first.join().unwrap().is_err());
    }

    /// Two nodes sum many steps, each getting the same sum; then a node that leaves mid-run
    /// stops the other with a message naming it.
    #[test]
    fn nodes_get_the_sum_of_every_step_and_a_node_leaving_is_named() {
        let port = orchestrator();
        let other = std::thread::spawn(move || {
            let sum = attend("127.0.0.1", port, &hello(1, "a"), LONG).unwrap();
            (0..200).map(|k| sum.all_sum(vec![k as f32, 1.0]).unwrap()).collect::<Vec<_>>()
        });
        let sum = attend("127.0.0.1", port, &hello(0, "a"), LONG).unwrap();
        let mine: Vec<_> = (0..200).map(|k| sum.all_sum(vec![0.5, k as f32 * 2.0]).unwrap()).collect();
        assert_eq!(mine, other.join().unwrap());
        assert_eq!(mine[7], [7.5, 15.0]);
        drop(sum);
        std::thread::sleep(Duration::from_millis(300));
        // The next run: rank 1 leaves after one step.
        let other = std::thread::spawn(move || {
            let sum = attend("127.0.0.1", port, &hello(1, "a"), LONG).unwrap();
            sum.all_sum(vec![1.0]).unwrap();
        });
        let sum = attend("127.0.0.1", port, &hello(0, "a"), LONG).unwrap();
        assert_eq!(sum.all_sum(vec![2.0]).unwrap(), [3.0]);
        other.join().unwrap();
        let e = sum.all_sum(vec![2.0]).unwrap_err().to_string();
        assert!(e.contains("the run stopped at step 2: node 1 left the run"), "{e}");
    }

    #[test]
    fn no_orchestrator_is_an_error_that_says_how_to_start_one() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let e = attend("127.0.0.1", port, &hello(0, "a"), Duration::from_millis(600)).err().unwrap().to_string();
        assert!(e.contains("cannot be reached") && e.contains("trainer orchestrator --port"), "{e}");
    }
}
