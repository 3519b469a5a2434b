//! Interventions with learnable parameters, equal to pyvene's and pyreft's: interchange and
//! ablations, DAS (full, low rank, Boundless), sigmoid masks, the ReFT family, linear probes,
//! steering vectors and JumpReLU SAE interchange. Orthogonal matrices stay orthogonal by
//! construction ([`orthogonal`]).

#![warn(missing_docs)]

pub mod activation;
pub mod das;
pub mod directions;
pub mod error;
pub mod export;
pub mod family;
pub mod fixed;
pub mod intervention;
pub mod linalg;
pub mod logistic;
pub mod orthogonal;
pub mod placement;
pub mod probe;
pub mod pyvene;
pub mod pyvene_save;
pub mod reft;
pub mod sae;
pub mod sae_formats;
pub mod set;
pub mod steering;
pub mod subspace;
pub mod torch_save;
pub mod torch_strides;

pub use activation::Activation;
pub use error::{InterventionError, Result};
pub use ferrovene_models::rng::Rng;
pub use intervention::Intervention;
pub use orthogonal::Orthogonal;
pub use placement::{Composition, Intervene, Placement, Skip};
pub use set::{InterventionSet, Layout, Placed, Share, Slot, checkpoint_site};
