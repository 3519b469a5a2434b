//! Plots a run leaves beside its numbers, as SVG (and PNG for heatmaps), with no plotting
//! dependency.

pub mod heatmap;
pub mod lineplot;

pub use heatmap::Heatmap;
pub use lineplot::{LinePlot, Series};
