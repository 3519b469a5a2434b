//! The trainer's library: the pieces the `trainer` binary runs, testable on their own.
//!
//! Today: DAS on counterfactual pairs at one site — batches prepared once with the frozen
//! model's run up to the site cached ([`das::prepare`]), training of the intervention only
//! ([`das::train`]), and interchange intervention accuracy with its no-intervention control
//! ([`das::evaluate`]).

pub mod das;
pub mod device;
pub mod eval;
pub mod predict;
pub mod recipe;
