//! A small multilayer perceptron for synthetic tasks (e.g. the hierarchical-equality DAS task):
//! `h₀ = x`, `hᵢ = ReLU(Wᵢ hᵢ₋₁ + bᵢ)` for each hidden layer, `logits = W_out h_L + b_out`.
//! Its sites are the hidden layers' outputs (`i.hidden`), each `[batch, 1, width]`.

use burn::module::{Module, Param};
use burn::tensor::{Distribution, Tensor, activation::relu, backend::Backend};

use crate::error::{ModelError, Result};
use crate::hooks::{Hooks, NoHooks, hook};
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

/// `t`'s values in a row-major tensor of their own.
fn contiguous<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    let device = t.device();
    Tensor::from_data(t.into_data(), &device)
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
                weight: Param::from_tensor(contiguous(Tensor::random([d_in, d_out], u, device).transpose())),
                bias: Some(Param::from_tensor(Tensor::random([d_out], u, device))),
                bf16: None,
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
                // Drawn `[in, out]` as before the layout was torch's, so a seed gives the same MLP;
                // stored `[out, in]` row-major, the layout every later step keeps (a transposed
                // view at the start would make the first product take another kernel path).
                weight: Param::from_tensor(contiguous(rng.uniform_tensor([d_in, d_out], bound, device).transpose())),
                bias: Some(Param::from_tensor(rng.uniform_tensor([d_out], bound, device))),
                bf16: None,
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
            return Err(ModelError::ActivationShape {
                site: site.to_string(),
                found: vec![batch, one, w],
                expected: vec![batch, 1, width],
            });
        }
        Ok(self.go_on(site.layer + 1, activation.reshape([batch, width]), hooks))
    }

    /// Logits without hooks.
    pub fn predict(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.forward(x, &mut NoHooks)
    }
}

/// One stacked layer: `[models, out, in]` weights and `[models, 1, out]` biases.
type StackedLayer<B> = (Param<Tensor<B, 3>>, Param<Tensor<B, 3>>);

/// Several MLPs of the same widths, trained side by side as one module: layer `i`'s weights of
/// every model in one `[models, out, in]` tensor, its biases in one `[models, 1, out]`, and one
/// batched matrix product per layer for all of them. Each model reads its own rows of the
/// `[models, batch, d_in]` input, so its outputs, its gradients and (under an elementwise
/// optimizer such as Adam) its training are the ones it would have alone; what is saved is the
/// per-operation overhead that dominates tiny models (the hierarchical-equality MLPs are 16 wide).
#[derive(Module, Debug)]
pub struct StackedMlp<B: Backend> {
    /// Per hidden layer: `[models, out, in]` weights and `[models, 1, out]` biases.
    layers: Vec<StackedLayer<B>>,
    /// The output layer, the same way.
    out: StackedLayer<B>,
}

/// `[models, rows, in]` through one stacked layer: `x Wᵀ + b` per model, and its ReLU when
/// `relu` ([`crate::fused_layer::stacked_affine`]: one autodiff node on burn-flex).
///
/// The operands are laid out as a model alone has them, so that each model's numbers are its
/// own to the last bit: `W` row-major, read transposed by the product, as an [`Mlp`]'s is (a
/// product takes its kernel path from its operands' strides, and paths round differently).
fn stacked_linear<B: Backend>(x: Tensor<B, 3>, layer: &StackedLayer<B>, relu: bool) -> Tensor<B, 3> {
    crate::fused_layer::stacked_affine(x, layer.0.val(), layer.1.val(), relu)
}

impl<B: Backend> StackedMlp<B> {
    /// The models `mlps` (same widths, with biases), stacked in that order.
    pub fn stack(mlps: &[Mlp<B>]) -> Result<Self> {
        let first = mlps
            .first()
            .ok_or_else(|| ModelError::Config { path: "StackedMlp".into(), reason: "no models to stack".into() })?;
        let widths = |m: &Mlp<B>| m.layers.iter().chain([&m.out]).map(|l| l.weight.val().dims()).collect::<Vec<_>>();
        if let Some(i) = mlps
            .iter()
            .position(|m| widths(m) != widths(first) || m.layers.iter().chain([&m.out]).any(|l| l.bias.is_none()))
        {
            return Err(ModelError::Config {
                path: "StackedMlp".into(),
                reason: format!("model {i} has other widths than model 0, or a layer without a bias"),
            });
        }
        let stack = |pick: &dyn Fn(&Mlp<B>) -> &Linear<B>| {
            let w = Tensor::stack::<3>(mlps.iter().map(|m| pick(m).weight.val()).collect(), 0);
            let b = Tensor::stack::<2>(
                mlps.iter().map(|m| pick(m).bias.as_ref().map(|b| b.val()).expect("checked above")).collect(),
                0,
            )
            .unsqueeze_dim(1);
            (Param::from_tensor(w.detach()), Param::from_tensor(b.detach()))
        };
        let layers = (0..first.layers.len()).map(|i| stack(&|m: &Mlp<B>| &m.layers[i])).collect();
        Ok(StackedMlp { layers, out: stack(&|m: &Mlp<B>| &m.out) })
    }

    /// How many models.
    pub fn models(&self) -> usize {
        self.out.0.val().dims()[0]
    }

    /// Model `i` on its own: the same parameters as an [`Mlp`].
    pub fn model(&self, i: usize) -> Mlp<B> {
        let pick = |layer: &StackedLayer<B>| {
            let [_, d_out, d_in] = layer.0.val().dims();
            Linear {
                weight: Param::from_tensor(layer.0.val().narrow(0, i, 1).reshape([d_out, d_in])),
                bias: Some(Param::from_tensor(layer.1.val().narrow(0, i, 1).reshape([d_out]))),
                bf16: None,
            }
        };
        Mlp { layers: self.layers.iter().map(pick).collect(), out: pick(&self.out) }
    }

    /// Logits `[models, batch, d_out]` of inputs `[models, batch, d_in]` (model `i` reads row
    /// block `i`).
    pub fn predict(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.resume(0, x)
    }

    /// The activations `[models, batch, width]` after hidden layer `layer` (0-based).
    pub fn run_to(&self, x: Tensor<B, 3>, layer: usize) -> Tensor<B, 3> {
        self.layers[..=layer].iter().fold(x, |h, l| stacked_linear(h, l, true))
    }

    /// Logits from the activations `h` (`[models, batch, width]`) placed after hidden layer
    /// `from − 1` (so `from = 0` takes inputs): layers `from..`, then the output layer.
    pub fn resume(&self, from: usize, h: Tensor<B, 3>) -> Tensor<B, 3> {
        let h = self.layers[from..].iter().fold(h, |h, l| stacked_linear(h, l, true));
        stacked_linear(h, &self.out, false)
    }
}
