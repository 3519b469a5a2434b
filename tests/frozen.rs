//! The loaded model is frozen: on an autodiff backend, gradients flow *through* it to a tensor
//! injected at a site, and none of its own parameters requires or receives a gradient.

mod common;

use burn::backend::Autodiff;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Int, Tensor, backend::AutodiffBackend};
use common::*;
use ferrovene_models::{Component, FnHook, Input, Site, Transformer, forward, load_folder, scatter_positions};

type AD = Autodiff<B>;

struct ParamCheck<'a> {
    grads: &'a <AD as AutodiffBackend>::Gradients,
    seen: usize,
    with_grad: usize,
    requiring: usize,
}

impl ModuleVisitor<AD> for ParamCheck<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
        self.seen += 1;
        let t = param.val();
        if t.is_require_grad() {
            self.requiring += 1;
        }
        if t.grad(self.grads).is_some() {
            self.with_grad += 1;
        }
    }
}

#[test]
fn gradients_reach_an_injected_tensor_but_not_the_model() {
    let dev = Default::default();
    for name in ["tiny/llama", "tiny/gpt2", "tiny/gpt_neox"] {
        let model = load_folder::<AD>(&golden(name), &dev).unwrap().model;
        let delta = Tensor::<AD, 3>::ones([1, 1, 32], &dev).require_grad();
        let pos = Tensor::<AD, 1, Int>::from_ints([2], &dev).reshape([1, 1]);
        let site = Site::new(1, Component::BlockOutput);
        let d = delta.clone();
        let mut add = FnHook::new([site], move |_s, h: Tensor<AD, 3>| {
            let old = ferrovene_models::gather_positions(h.clone(), pos.clone());
            scatter_positions(h, pos.clone(), old + d.clone())
        });
        let input = Input::<AD>::from_ids(&[vec![5, 17, 42, 8, 91]], &dev);
        let loss = model.head(forward(&model, &input, &mut add)).unwrap().slice([0..1, 4..5]).sum();
        let grads = loss.backward();
        let g = delta.grad(&grads).expect("the injected tensor gets a gradient");
        let norm: f32 = g.into_data().to_vec::<f32>().unwrap().iter().map(|x| x * x).sum();
        assert!(norm > 0.0, "{name}: zero gradient at the site");
        let mut check = ParamCheck { grads: &grads, seen: 0, with_grad: 0, requiring: 0 };
        model.visit(&mut check);
        assert!(check.seen > 10, "{name}: visited {} parameters", check.seen);
        assert_eq!((check.requiring, check.with_grad), (0, 0), "{name}: model parameters require or got gradients");
    }
}
