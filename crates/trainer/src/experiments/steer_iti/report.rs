//! What a steer-iti run leaves: the per-head accuracy heatmap and CSV, the α curve as CSV and
//! plot, one export per steered layer, `report.json`, and the console summary, all from one
//! [`Found`] value.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Result;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use ferrovene_interventions::Intervention;
use ferrovene_interventions::export::{self, ExportConfig, ModelConfig, PlacementConfig};
use ferrovene_interventions::steering::Steering;
use ferrovene_models::LoadedModel;
use serde_json::json;

use super::recipe::SteerItiRecipe;
use super::stages::{Curve, FactSplit, Probes, Shifts};
use crate::plot::{Heatmap, LinePlot, Series};
use crate::run_dir::RunDir;

/// Everything the run found.
pub struct Found<'a> {
    /// The recipe's name.
    pub name: &'a str,
    /// The recipe.
    pub r: &'a SteerItiRecipe,
    /// The facts and their split.
    pub split: &'a FactSplit,
    /// The probes per head and the top heads.
    pub probes: &'a Probes,
    /// The ITI shift per layer.
    pub iti: &'a Shifts,
    /// The α curve.
    pub curve: &'a Curve,
    /// Layers of the model.
    pub layers: usize,
}

impl Found<'_> {
    /// Writes every file of the run.
    pub fn write<B: Backend>(
        &self,
        dir: &RunDir,
        loaded: &LoadedModel<B>,
        width: usize,
        device: &B::Device,
    ) -> Result<()> {
        self.write_heads(dir)?;
        self.write_curve(dir)?;
        self.write_exports(dir, loaded, width, device)?;
        dir.write_report(self.report(loaded))?;
        Ok(())
    }

    fn write_heads(&self, dir: &RunDir) -> Result<()> {
        let accuracy = &self.probes.accuracy;
        Heatmap {
            title: &format!("{}: validation accuracy of a probe per head (true vs false statements)", self.name),
            rows: (0..self.layers).map(|l| l.to_string()).collect(),
            columns: (0..self.probes.heads).map(|h| h.to_string()).collect(),
            values: accuracy.iter().map(|row| row.iter().map(|&a| Some(a)).collect()).collect(),
            scale: 1.0,
            axes: ("layer", "head"),
        }
        .write(&dir.join("head-accuracy"))?;
        let mut csv = String::from("layer,head,accuracy\n");
        for (l, row) in accuracy.iter().enumerate() {
            for (h, a) in row.iter().enumerate() {
                let _ = writeln!(csv, "{l},{h},{a}");
            }
        }
        dir.write("head-accuracy.csv", csv)?;
        Ok(())
    }

    fn write_curve(&self, dir: &RunDir) -> Result<()> {
        let points = &self.curve.points;
        let mut csv = String::from("alpha,topic,prompts,p_true,true_share,p_true_random,true_share_random\n");
        for p in points {
            let _ = writeln!(
                csv,
                "{},all,{},{},{},{},{}",
                p.alpha, self.curve.n_prompts, p.p_true, p.true_share, p.p_true_random, p.true_share_random
            );
            for (t, x) in &p.by_topic {
                let _ = writeln!(
                    csv,
                    "{},{t},{},{},{},{},{}",
                    p.alpha, x.n, x.p_true, x.true_share, x.p_true_random, x.true_share_random
                );
            }
        }
        dir.write("alpha.csv", csv)?;
        LinePlot {
            title: &format!("{}: p(true answer) on held-out prompts against α", self.name),
            axes: ("α (in σ along each head's direction)", "mean p(true answer)"),
            series: vec![
                Series {
                    name: format!("ITI, top {} heads", self.r.top_k),
                    points: points.iter().map(|p| (p.alpha, p.p_true as f64)).collect(),
                },
                Series {
                    name: "random directions".into(),
                    points: points.iter().map(|p| (p.alpha, p.p_true_random as f64)).collect(),
                },
            ]
            .into_iter()
            .chain(self.curve.topics.keys().map(|&t| Series {
                name: format!("ITI, {t}"),
                points: points.iter().map(|p| (p.alpha, p.by_topic[t].p_true as f64)).collect(),
            }))
            .collect(),
        }
        .write(&dir.join("alpha"))?;
        Ok(())
    }

    fn write_exports<B: Backend>(
        &self,
        dir: &RunDir,
        loaded: &LoadedModel<B>,
        width: usize,
        device: &B::Device,
    ) -> Result<()> {
        let export_dir = dir.join("iti");
        std::fs::create_dir_all(&export_dir)?;
        for (&l, v) in self.iti {
            let iv = Intervention::Steering(Steering::fixed(
                Tensor::<B, 1>::from_data(TensorData::new(v.clone(), [width]), device),
                self.r.export_alpha,
            ));
            let heads_here: Vec<usize> = self.probes.top.iter().filter(|(tl, _)| *tl == l).map(|(_, h)| *h).collect();
            let placement = PlacementConfig {
                sites: vec![format!("{l}.head_attention_value_output")],
                positions: "all".into(),
                site_width: width,
                ..Default::default()
            };
            let training = json!({"recipe": self.name, "heads": heads_here, "alpha": self.r.export_alpha, "rule": "mass-mean shift, sigma-scaled"});
            export::save(
                &iv,
                ExportConfig::new(placement, ModelConfig::of(loaded), training),
                &export_dir.join(format!("layer-{l}.safetensors")),
            )?;
        }
        Ok(())
    }

    fn report<B: Backend>(&self, loaded: &LoadedModel<B>) -> serde_json::Value {
        let split = self.split;
        let topic_counts = |ids: &[usize]| -> BTreeMap<&str, usize> {
            let mut m = BTreeMap::new();
            for &i in ids {
                *m.entry(split.all[i].topic).or_insert(0) += 1;
            }
            m
        };
        let accuracy = &self.probes.accuracy;
        json!({
            "recipe": self.name,
            "data": {"train_facts": topic_counts(&split.train), "validation_facts": topic_counts(&split.validation), "held_out_facts": topic_counts(&split.test)},
            "top_heads": self.probes.top.iter().map(|&(l, h)| json!({"layer": l, "head": h, "accuracy": accuracy[l][h]})).collect::<Vec<_>>(),
            "alpha_curve": self.curve.points,
            "model": {"spec": self.r.model, "path": loaded.path, "revision": loaded.revision},
        })
    }

    /// The console summary: the top heads, the α curve overall and per topic.
    pub fn summary(&self) -> String {
        let (r, accuracy, points) = (self.r, &self.probes.accuracy, &self.curve.points);
        let mut out = format!(
            "{}: probes on {} heads; top {} by validation accuracy:",
            self.name,
            self.probes.heads * self.layers,
            r.top_k
        );
        for &(l, h) in self.probes.top.iter().take(8) {
            let _ = write!(out, " {l}.{h} ({:.2})", accuracy[l][h]);
        }
        let _ = writeln!(
            out,
            "\neffect of α on {} held-out prompts (mean p(true answer); p(true)/(p(true)+p(false)) in brackets):",
            self.curve.n_prompts
        );
        let _ = writeln!(out, "{:>7} {:>18} {:>22}", "alpha", "ITI", "random directions");
        for p in points {
            let _ = writeln!(
                out,
                "{:>7} {:>9.4} ({:.3}) {:>13.4} ({:.3})",
                p.alpha, p.p_true, p.true_share, p.p_true_random, p.true_share_random
            );
        }
        let _ = writeln!(out, "by topic, mean p(true answer) with ITI / random directions:");
        let _ = writeln!(
            out,
            "{:>7} {}",
            "alpha",
            self.curve
                .topics
                .iter()
                .map(|(t, rows)| format!("{:>24}", format!("{t} ({})", rows.len())))
                .collect::<String>()
        );
        for p in points {
            let cells: String = p
                .by_topic
                .values()
                .map(|x| format!("{:>24}", format!("{:.4} / {:.4}", x.p_true, x.p_true_random)))
                .collect();
            let _ = writeln!(out, "{:>7} {cells}", p.alpha);
        }
        out
    }
}
