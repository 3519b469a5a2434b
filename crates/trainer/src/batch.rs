//! Turning padded token rows and position lists into the tensors a model takes: shared by every
//! objective, command and experiment that batches text.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use ferrovene_models::Input;

/// `[rows, k]` integer tensor of positions (each row the same length `k`).
pub fn int2<B: Backend>(rows: &[Vec<usize>], device: &B::Device) -> Tensor<B, 2, Int> {
    let (n, k) = (rows.len(), rows.first().map_or(0, Vec::len));
    let flat: Vec<i64> = rows.iter().flatten().map(|&p| p as i64).collect();
    Tensor::from_data(TensorData::new(flat, [n, k]), device)
}

/// A model input from padded ids and their attention mask (`[batch][seq]` each).
pub fn input_of<B: Backend>(ids: &[Vec<u32>], mask: &[Vec<u32>], device: &B::Device) -> Input<B> {
    let (n, s) = (ids.len(), ids.first().map_or(0, Vec::len));
    let to = |rows: &[Vec<u32>]| -> Tensor<B, 2, Int> {
        Tensor::from_data(TensorData::new(rows.iter().flatten().map(|&x| x as i64).collect::<Vec<_>>(), [n, s]), device)
    };
    Input { ids: to(ids), mask: to(mask), token_types: None, past: None }
}

/// Per row, the index of the last real (unmasked) token: where a causal LM predicts the next one.
pub fn last_real(mask: &[Vec<u32>]) -> Vec<Vec<usize>> {
    mask.iter().map(|m| vec![m.iter().rposition(|&x| x == 1).unwrap_or(0)]).collect()
}
