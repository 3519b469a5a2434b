//! The trainer's library: the pieces the `trainer` binary runs, testable on their own.
//!
//! - [`das`], [`reft`], [`probe`]: what each kind of intervention is trained on — batches with
//!   the frozen model's work done once, the loss, the evaluation;
//! - [`fit`]: the one training loop (schedules, clipping, accumulation, annealing, early
//!   stopping, checkpoints, Ctrl-C, resume), with [`checkpoint`], [`schedule`] and [`events`]
//!   (TensorBoard, progress bars);
//! - [`hierarchical`]: the hierarchical-equality task (an MLP trained from scratch, then DAS);
//! - [`recipe`] and [`run`]: recipes and running them; [`eval`], [`predict`], [`apply`]: the
//!   other commands; [`steer`]: steering vectors from two sets of texts; [`device`]: choosing the backend at run time;
//! - the experiment recipes: [`probe_layers`], [`filler_gap`], [`reft_memorise`], [`steer_iti`],
//!   with [`generate`] (decoding with interventions, KV cache), [`heatmap`] and [`lineplot`].

pub mod apply;
pub mod checkpoint;
pub mod das;
pub mod device;
pub mod eval;
pub mod events;
pub mod filler_gap;
pub mod fit;
pub mod generate;
pub mod heatmap;
pub mod hierarchical;
pub mod lineplot;
pub mod predict;
pub mod probe;
pub mod probe_layers;
pub mod recipe;
pub mod reft;
pub mod reft_memorise;
pub mod run;
pub mod schedule;
pub mod steer;
pub mod steer_iti;
