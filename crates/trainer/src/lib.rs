//! The trainer's library: what the `trainer` binary runs, testable on its own. Its layers, from
//! the bottom (each imports only from the layers below it; ARCHITECTURE.md has the picture):
//!
//! - the core: [`fit`] (the one training loop, for any [`fit::Trainable`] module) with
//!   [`checkpoint`], [`schedule`] and [`events`]; [`run_dir`] (the run folder and its report);
//!   [`recipe`] (recipe files and `--set`); [`batch`] (tensors from padded rows); [`generate`]
//!   (decoding with interventions, KV cache); [`plot`] (heatmaps, line plots); [`device`]
//!   (choosing the backend at run time); [`resident`] (models kept loaded between runs);
//! - [`objectives`]: what DAS, ReFT and probes are trained on (batches with the frozen model's
//!   work done once, the loss, the evaluation);
//! - [`experiments`]: every recipe kind, as one closed [`experiments::Recipe`] type, each kind in
//!   its own module;
//! - [`commands`]: the binary's subcommands (apply, eval, predict, steer, list, run, sweep).

#![warn(missing_docs)]

pub mod batch;
pub mod checkpoint;
pub mod commands;
pub mod device;
pub mod divergence;
pub mod events;
pub mod experiments;
pub mod fit;
pub mod generate;
pub mod grad_sum;
pub mod memory;
pub mod nodes;
pub mod objectives;
#[cfg(feature = "collective")]
pub mod parallel;
pub mod plot;
pub mod recipe;
pub mod replicas;
pub mod resident;
pub mod run_dir;
pub mod schedule;
pub mod shard;
pub mod threads;
pub mod units;
