//! A list of batches however it is held: in memory, or prepared each time one is asked for (see
//! [`super::das_batches`]), so that objectives and evaluations read either the same way.

use anyhow::Result;

/// Batches of type `T`, visited one at a time.
pub trait BatchList<T> {
    /// Number of batches.
    fn count(&self) -> usize;
    /// Calls `f` on batch `index`.
    fn visit(&self, index: usize, f: &mut dyn FnMut(&T) -> Result<()>) -> Result<()>;
}

impl<T> BatchList<T> for Vec<T> {
    fn count(&self) -> usize {
        self.len()
    }
    fn visit(&self, index: usize, f: &mut dyn FnMut(&T) -> Result<()>) -> Result<()> {
        f(&self[index])
    }
}
