//! What nodes and the orchestrator say to each other over one TCP connection per node.
//!
//! First the roll call, in JSON lines: the node sends one [`Hello`]; the orchestrator answers
//! [`Reply::Arrived`] four times a second while it waits for the others, then [`Reply::Ready`]
//! or [`Reply::Refused`]. Then, on the same connection, one [`Frame`] each way per training
//! step: the node's values, and the sum of every node's.

use std::io::{Read, Write};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// What a node says when it arrives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Its `--node-rank`.
    pub rank: usize,
    /// Its `--nodes`.
    pub nodes: usize,
    /// Its recipe's and data's fingerprint.
    pub fingerprint: String,
}

/// What the orchestrator answers during the roll call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "lowercase")]
pub enum Reply {
    /// Still waiting; these ranks have arrived.
    Arrived {
        /// The ranks here so far.
        ranks: Vec<usize>,
    },
    /// Every node has arrived with the same fingerprint: training starts.
    Ready,
    /// This run cannot start, and why.
    Refused {
        /// What is wrong and how to fix it.
        why: String,
    },
}

/// One message of the training: a step's values, or why the run cannot go on.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Step `step`'s values (a node's, or the sum of all nodes').
    Values {
        /// Counts the sums from 1.
        step: u64,
        /// The values.
        values: Vec<f32>,
    },
    /// The run stopped (a node left, or sent values of another length).
    Failed(String),
}

/// Largest frame accepted: 4 GiB of values.
const MOST_BYTES: u64 = 1 << 32;

impl Frame {
    /// Writes the frame: a tag byte (0 values, 1 failure), the step (values only) and the
    /// length as little-endian u64, then the f32s (little-endian) or the message (UTF-8).
    pub fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        match self {
            Frame::Values { step, values } => {
                bytes.push(0u8);
                bytes.extend(step.to_le_bytes());
                bytes.extend((values.len() as u64).to_le_bytes());
                bytes.reserve(4 * values.len());
                for v in values {
                    bytes.extend(v.to_le_bytes());
                }
            }
            Frame::Failed(why) => {
                bytes.push(1u8);
                bytes.extend((why.len() as u64).to_le_bytes());
                bytes.extend(why.as_bytes());
            }
        }
        out.write_all(&bytes)?;
        out.flush()
    }

    /// Reads one frame; `Ok(None)` when the other end closed the connection before one began.
    pub fn read(input: &mut impl Read) -> Result<Option<Frame>> {
        let mut tag = [0u8; 1];
        match input.read(&mut tag) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        let mut word = [0u8; 8];
        let mut u64_of = |input: &mut dyn Read| -> Result<u64> {
            input.read_exact(&mut word)?;
            Ok(u64::from_le_bytes(word))
        };
        match tag[0] {
            0 => {
                let step = u64_of(input)?;
                let n = u64_of(input)?;
                if 4 * n > MOST_BYTES {
                    bail!("a frame of {n} values (at most {} accepted)", MOST_BYTES / 4);
                }
                let mut bytes = vec![0u8; 4 * n as usize];
                input.read_exact(&mut bytes)?;
                let values = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                Ok(Some(Frame::Values { step, values }))
            }
            1 => {
                let n = u64_of(input)?;
                if n > 1 << 20 {
                    bail!("a failure message of {n} bytes");
                }
                let mut bytes = vec![0u8; n as usize];
                input.read_exact(&mut bytes)?;
                Ok(Some(Frame::Failed(String::from_utf8_lossy(&bytes).into_owned())))
            }
            other => bail!("a frame with tag {other}: not a ferrovene node or orchestrator"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_back_as_written() {
        let frames = [
            Frame::Values { step: 7, values: vec![1.5, -0.0, f32::MIN_POSITIVE, 3e38] },
            Frame::Failed("rank 1 left".into()),
        ];
        let mut bytes = Vec::new();
        for f in &frames {
            f.write(&mut bytes).unwrap();
        }
        let mut input = bytes.as_slice();
        for f in &frames {
            assert_eq!(Frame::read(&mut input).unwrap().as_ref(), Some(f));
        }
        assert_eq!(Frame::read(&mut input).unwrap(), None);
        assert!(Frame::read(&mut [9u8].as_slice()).unwrap_err().to_string().contains("tag 9"));
    }
}
