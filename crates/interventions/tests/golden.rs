//! Every file of tests/golden/interventions matched within 1e-6: the weights from the file,
//! applied to its base and source rows. pyvene's materialised `W` (`d × k`, rotated = h·W) is
//! our `R = Wᵀ`.

use std::collections::HashMap;

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use ferrovene_interventions::das::{BoundlessDas, DasFull, DasLowRank, SigmoidMask};
use ferrovene_interventions::fixed::{Fixed, FixedOp};
use ferrovene_interventions::reft::{Projection, ReftFamily, ReftIntervention};
use ferrovene_interventions::{Activation, Intervention, Orthogonal};

type B = ferrovene_models::Cpu;

struct Golden {
    t: HashMap<String, (Vec<f32>, Vec<usize>)>,
    k: usize,
}

fn golden(name: &str) -> Golden {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/golden/interventions")
        .join(format!("{name}.safetensors"));
    assert!(
        p.exists(),
        "golden file {} is missing: these tests read tests/golden (copied from ../shared/golden)",
        p.display()
    );
    let bytes = std::fs::read(&p).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let k: usize = meta.metadata().as_ref().unwrap()["k"].parse().unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                (
                    v.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
                    v.shape().to_vec(),
                ),
            )
        })
        .collect();
    Golden { t, k }
}

impl Golden {
    fn t2(&self, name: &str) -> Tensor<B, 2> {
        let (v, s) = &self.t[name];
        Tensor::from_data(TensorData::new(v.clone(), [s[0], s[1]]), &Default::default())
    }
    fn t1(&self, name: &str) -> Tensor<B, 1> {
        let (v, s) = &self.t[name];
        Tensor::from_data(TensorData::new(v.clone(), [s[0]]), &Default::default())
    }
    /// base/source rows as `[batch, 1, d]`.
    fn rows(&self, name: &str) -> Tensor<B, 3> {
        self.t2(name).unsqueeze_dim(1)
    }
    /// pyvene's W (d × k) as our R (k × d), fixed.
    fn rotation(&self) -> Orthogonal<B> {
        Orthogonal::fixed(self.t2("W").transpose())
    }
    fn projection(&self, prefix: &str) -> Projection<B> {
        Projection {
            weight: Param::from_tensor(self.t2(&format!("{prefix}.weight"))),
            bias: Param::from_tensor(self.t1(&format!("{prefix}.bias"))),
        }
    }
    fn check(&self, name: &str, iv: &Intervention<B>, with_source: bool) {
        let source = with_source.then(|| self.rows("source"));
        let out: Vec<f32> = iv.apply(self.rows("base"), source).unwrap().into_data().to_vec().unwrap();
        let want = &self.t["output"].0;
        let d = out.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(d < 1e-6, "{name}: output differs from pyvene/pyreft by {d}");
    }
}

fn fixed(name: &str, op: FixedOp) {
    golden(name).check(name, &Intervention::Fixed(Fixed::new(op)), true);
}

#[test]
fn addition() {
    fixed("addition", FixedOp::Addition);
}

#[test]
fn subtraction() {
    fixed("subtraction", FixedOp::Subtraction);
}

#[test]
fn zero() {
    fixed("zero", FixedOp::Zero);
}

#[test]
fn interchange_first_k() {
    // The subspace (first k dims) is chosen at placement; here the intervention sees all dims,
    // so the expected output is the base with its first k dims from the source.
    let g = golden("interchange_first_k");
    let d = g.t["base"].1[1];
    let iv = Intervention::<B>::Fixed(Fixed::new(FixedOp::Interchange));
    let dims: Vec<usize> = (0..g.k).collect();
    let out = ferrovene_interventions::subspace::apply_on_dims(&iv, g.rows("base"), Some(g.rows("source")), &dims, d)
        .unwrap();
    let out: Vec<f32> = out.into_data().to_vec().unwrap();
    let d = out.iter().zip(&g.t["output"].0).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(d < 1e-6, "interchange of the first k dims differs by {d}");
}

#[test]
fn das_full() {
    let g = golden("das_full");
    let iv = Intervention::DasFull(DasFull { rotation: g.rotation(), k: g.k });
    g.check("das_full", &iv, true);
}

#[test]
fn das_low_rank() {
    let g = golden("das_low_rank");
    g.check("das_low_rank", &Intervention::DasLowRank(DasLowRank { rotation: g.rotation() }), true);
}

#[test]
fn das_boundless() {
    let g = golden("das_boundless");
    let iv = Intervention::Boundless(BoundlessDas {
        rotation: g.rotation(),
        boundary: Param::from_tensor(g.t1("intervention_boundaries")),
        temperature: 2.0,
    });
    g.check("das_boundless", &iv, true);
}

#[test]
fn sigmoid_mask() {
    let g = golden("sigmoid_mask");
    let iv = Intervention::SigmoidMask(SigmoidMask {
        mask: Param::from_tensor(g.t1("mask")),
        rotation: None,
        temperature: 0.5,
    });
    g.check("sigmoid_mask", &iv, true);
}

fn reft(name: &str, family: ReftFamily) {
    let g = golden(name);
    let has = |n: &str| g.t.contains_key(n);
    let iv = ReftIntervention {
        family,
        rotation: has("W").then(|| g.rotation()),
        learned_source: has("learned_source.weight").then(|| g.projection("learned_source")),
        proj_layer: has("proj_layer.weight").then(|| g.projection("proj_layer")),
        learned_bias: (has("learned_source") && !has("learned_source.weight"))
            .then(|| Param::from_tensor(g.t1("learned_source"))),
        act: Activation::Identity,
        dropout: burn::nn::DropoutConfig::new(0.0).init(),
    };
    g.check(name, &Intervention::Reft(iv), false);
}

#[test]
fn loreft() {
    reft("loreft", ReftFamily::LoReft);
}

#[test]
fn noreft() {
    reft("noreft", ReftFamily::NoReft);
}

#[test]
fn consreft() {
    reft("consreft", ReftFamily::ConsReft);
}

#[test]
fn lobireft() {
    reft("lobireft", ReftFamily::LoBiReft);
}

#[test]
fn direft() {
    reft("direft", ReftFamily::DiReft);
}

#[test]
fn nodireft() {
    reft("nodireft", ReftFamily::NoDiReft);
}

#[test]
fn every_golden_file_has_a_test() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/interventions");
    let tested = [
        "addition",
        "subtraction",
        "zero",
        "interchange_first_k",
        "das_full",
        "das_low_rank",
        "das_boundless",
        "sigmoid_mask",
        "loreft",
        "noreft",
        "consreft",
        "lobireft",
        "direft",
        "nodireft",
    ];
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().path().file_stem().unwrap().to_string_lossy().into_owned();
        assert!(tested.contains(&name.as_str()), "golden file {name} has no test");
    }
}
