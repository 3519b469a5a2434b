//! A small multilayer perceptron for synthetic tasks (e.g. the hierarchical-equality DAS task):
//! `h₀ = x`, `hᵢ = ReLU(Wᵢ hᵢ₋₁ + bᵢ)` for each hidden layer, `logits = W_out h_L + b_out`.
//! Its sites are the hidden layers' outputs (`i.hidden`), each `[batch, 1, width]`.

use burn::module::{Module, Param};
use burn::tensor::{activation::relu, backend::Backend, Distribution, Tensor};

use crate::error::{ModelError, Result};
use crate::hooks::{hook, Hooks, NoHooks};
use crate::layers::Linear;
use crate::site::{Component, Site, SiteInfo};

/// Widths of an MLP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlpConfig {
    /// Input width.
    pub d_in: usize,
    /// Width of each hidden layer, in order (the depth is its length).
    pub hidden: Vec<usize>,
    /// Number of output classes.
    pub d_out: usize,
}

/// The MLP; its parameters are trainable (it is trained before it is frozen and intervened on).
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    layers: Vec<Linear<B>>,
    out: Linear<B>,
}

impl<B: Backend> Mlp<B> {
    /// PyTorch's default initialisation (`U(±1/√fan_in)` for weights and biases), from the
    /// backend's generator: call `B::seed(device, s)` first for a reproducible model.
    pub fn init(config: &MlpConfig, device: &B::Device) -> Self {
        let linear = |d_in: usize, d_out: usize| {
            let bound = 1.0 / (d_in as f64).sqrt();
            let u = Distribution::Uniform(-bound, bound);
            Linear {
                weight: Param::from_tensor(Tensor::random([d_in, d_out], u, device).transpose()),
                bias: Some(Param::from_tensor(Tensor::random([d_out], u, device))),
            }
        };
        let mut layers = Vec::with_capacity(config.hidden.len());
        let mut d = config.d_in;
        for &w in &config.hidden {
            layers.push(linear(d, w));
            d = w;
        }
        Mlp { layers, out: linear(d, config.d_out) }
    }

    /// The same initialisation drawn from a seeded [`Rng`](crate::rng::Rng) instead of the
    /// backend's global generator, so that a model depends on its seed alone.
    pub fn init_seeded(config: &MlpConfig, rng: &mut crate::rng::Rng, device: &B::Device) -> Self {
        let mut linear = |d_in: usize, d_out: usize| {
            let bound = 1.0 / (d_in as f64).sqrt();
            Linear {
                // Drawn `[in, out]` as before the layout was torch's, so a seed gives the same MLP.
                weight: Param::from_tensor(rng.uniform_tensor([d_in, d_out], bound, device).transpose()),
                bias: Some(Param::from_tensor(rng.uniform_tensor([d_out], bound, device))),
            }
        };
        let mut layers = Vec::with_capacity(config.hidden.len());
        let mut d = config.d_in;
        for &w in &config.hidden {
            layers.push(linear(d, w));
            d = w;
        }
        let out = linear(d, config.d_out);
        Mlp { layers, out }
    }

    /// The hidden-layer sites, `0.hidden` … `(L−1).hidden`.
    pub fn sites(&self) -> Vec<SiteInfo> {
        self.layers
            .iter()
            .enumerate()
            .map(|(i, l)| SiteInfo { site: Site::new(i, Component::Hidden), width: l.d_out(), heads: 1 })
            .collect()
    }

    fn check(&self, site: Site) -> Result<()> {
        if site.component == Component::Hidden && site.layer < self.layers.len() {
            return Ok(());
        }
        Err(ModelError::UnknownSite {
            site: site.to_string(),
            arch: "mlp".into(),
            valid: self.sites().iter().map(|s| s.site.to_string()).collect::<Vec<_>>().join(", "),
        })
    }

    /// Logits `[batch, d_out]` of inputs `[batch, d_in]`, calling `hooks` at each hidden layer.
    pub fn forward(&self, x: Tensor<B, 2>, hooks: &mut dyn Hooks<B>) -> Tensor<B, 2> {
        self.go_on(0, x, hooks)
    }

    /// Layers `from..` on `h`, then the output layer.
    fn go_on(&self, from: usize, mut h: Tensor<B, 2>, hooks: &mut dyn Hooks<B>) -> Tensor<B, 2> {
        for (i, layer) in self.layers.iter().enumerate().skip(from) {
            let [batch, width] = [h.dims()[0], layer.d_out()];
            let a = relu(layer.forward(h)).reshape([batch, 1, width]);
            h = hook(hooks, Site::new(i, Component::Hidden), a).reshape([batch, width]);
        }
        self.out.forward(h)
    }

    /// The activation at `site` (`[batch, 1, width]`): all the run needs to go on.
    pub fn run_to(&self, x: Tensor<B, 2>, site: Site) -> Result<Tensor<B, 3>> {
        self.check(site)?;
        let mut h = x;
        for layer in &self.layers[..=site.layer] {
            h = relu(layer.forward(h));
        }
        let [batch, width] = h.dims();
        Ok(h.reshape([batch, 1, width]))
    }

    /// Logits from `activation` placed at `site`, calling `hooks` at later layers.
    pub fn resume(&self, site: Site, activation: Tensor<B, 3>, hooks: &mut dyn Hooks<B>) -> Result<Tensor<B, 2>> {
        self.check(site)?;
        let width = self.layers[site.layer].d_out();
        let [batch, one, w] = activation.dims();
        if one != 1 || w != width {
            return Err(ModelError::ActivationShape { site: site.to_string(), found: vec![batch, one, w], expected: vec![batch, 1, width] });
        }
        Ok(self.go_on(site.layer + 1, activation.reshape([batch, width]), hooks))
    }

    /// Logits without hooks.
    pub fn predict(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.forward(x, &mut NoHooks)
    }
}
