//! What each family of interventions is trained on: batches with the frozen model's work done
//! once, the loss of a batch (an [`crate::fit::Objective`]), and the held-out evaluation.

pub mod batches;
pub mod das;
pub mod das_batches;
mod das_shared;
pub mod odds;
pub mod probe;
pub mod reft;
