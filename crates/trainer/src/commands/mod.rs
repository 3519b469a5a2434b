//! The binary's subcommands, each generic over the backend where it runs a model
//! ([`crate::device::OnBackend`]). Recipes are reached only through
//! [`crate::experiments::Recipe`], never a kind's own module.

pub mod apply;
pub mod eval;
pub mod export;
pub mod import;
pub mod predict;
pub mod run;
pub mod sae;
pub mod steer;
pub mod sweep;

use anyhow::Result;

/// `trainer list`: every recipe with its description (or why it does not parse).
pub fn list() -> Result<()> {
    for (name, desc) in crate::experiments::list(&crate::recipe::recipes_dir())? {
        match desc {
            Ok(d) => println!("{name:<28} {d}"),
            Err(e) => println!("{name:<28} (invalid: {e:#})"),
        }
    }
    Ok(())
}
