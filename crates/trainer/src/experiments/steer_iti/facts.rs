//! The statements ITI probes and steers: templated facts (capitals, one-digit arithmetic,
//! category membership), each with a true and a false answer; the probed texts built from them;
//! and the prompts the α curve scores.

use anyhow::{Result, bail};
use ferrovene_models::TextTokenizer;
use ferrovene_models::rng::Rng;
use serde::Serialize;

use super::recipe::{ProbeAt, SteerItiRecipe};

const CAPITALS: [(&str, &str); 44] = [
    ("France", "Paris"),
    ("Italy", "Rome"),
    ("Germany", "Berlin"),
    ("Spain", "Madrid"),
    ("Japan", "Tokyo"),
    ("Russia", "Moscow"),
    ("Egypt", "Cairo"),
    ("Greece", "Athens"),
    ("Portugal", "Lisbon"),
    ("Austria", "Vienna"),
    ("Ireland", "Dublin"),
    ("Norway", "Oslo"),
    ("Poland", "Warsaw"),
    ("Hungary", "Budapest"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"),
    ("Belgium", "Brussels"),
    ("England", "London"),
    ("China", "Beijing"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Cuba", "Havana"),
    ("Thailand", "Bangkok"),
    ("Canada", "Ottawa"),
    ("Chile", "Santiago"),
    ("Colombia", "Bogotá"),
    ("India", "New Delhi"),
    ("Iran", "Tehran"),
    ("Iraq", "Baghdad"),
    ("Turkey", "Ankara"),
    ("Syria", "Damascus"),
    ("Ukraine", "Kyiv"),
    ("Romania", "Bucharest"),
    ("Bulgaria", "Sofia"),
    ("Serbia", "Belgrade"),
    ("Croatia", "Zagreb"),
    ("Switzerland", "Bern"),
    ("Scotland", "Edinburgh"),
    ("Wales", "Cardiff"),
    ("Australia", "Canberra"),
    ("Vietnam", "Hanoi"),
    ("Indonesia", "Jakarta"),
    ("Ghana", "Accra"),
];
const CATEGORIES: [(&str, [&str; 6]); 6] = [
    ("animal", ["dog", "horse", "rabbit", "lion", "elephant", "tiger"]),
    ("fruit", ["apple", "banana", "cherry", "mango", "orange", "pear"]),
    ("vehicle", ["car", "bus", "truck", "bicycle", "tractor", "motorcycle"]),
    ("tool", ["hammer", "wrench", "saw", "screwdriver", "drill", "chisel"]),
    ("musical instrument", ["piano", "guitar", "violin", "trumpet", "flute", "cello"]),
    ("piece of furniture", ["chair", "sofa", "table", "wardrobe", "bed", "desk"]),
];

/// One fact: a prompt and its true and false answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fact {
    /// Topic (`capitals`, `arithmetic`, `categories`).
    pub topic: &'static str,
    /// The statement up to its answer, e.g. `The capital of France is`.
    pub prompt: String,
    /// The true answer, with its leading space.
    pub truth: String,
    /// A false answer of the same type.
    pub falsehood: String,
}

/// Every fact, in a fixed order; false answers drawn with `seed`.
pub fn facts(seed: u64) -> Vec<Fact> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for (i, (country, capital)) in CAPITALS.iter().enumerate() {
        let other = CAPITALS[(i + 1 + rng.below(CAPITALS.len() - 1)) % CAPITALS.len()].1;
        out.push(Fact {
            topic: "capitals",
            prompt: format!("The capital of {country} is"),
            truth: format!(" {capital}"),
            falsehood: format!(" {other}"),
        });
    }
    let wrong_digit = |rng: &mut Rng, right: u32| loop {
        let w = rng.below(10) as u32;
        if w != right {
            break w;
        }
    };
    for a in 1..=8u32 {
        for b in 1..=(9 - a) {
            let wrong = wrong_digit(&mut rng, a + b);
            out.push(Fact {
                topic: "arithmetic",
                prompt: format!("{a} plus {b} equals"),
                truth: format!(" {}", a + b),
                falsehood: format!(" {wrong}"),
            });
        }
    }
    for a in 2..=9u32 {
        for b in 1..a {
            let wrong = wrong_digit(&mut rng, a - b);
            out.push(Fact {
                topic: "arithmetic",
                prompt: format!("{a} minus {b} equals"),
                truth: format!(" {}", a - b),
                falsehood: format!(" {wrong}"),
            });
        }
    }
    for (c, (category, items)) in CATEGORIES.iter().enumerate() {
        for item in items {
            let other = CATEGORIES[(c + 1 + rng.below(CATEGORIES.len() - 1)) % CATEGORIES.len()].0;
            let article = if item.starts_with(['a', 'e', 'i', 'o', 'u']) { "An" } else { "A" };
            out.push(Fact {
                topic: "categories",
                prompt: format!("{article} {item} is a kind of"),
                truth: format!(" {category}"),
                falsehood: format!(" {other}"),
            });
        }
    }
    out
}

/// The probed texts of the facts `ids`, each with its label: per fact, `contexts_per_fact` draws
/// of `context_statements` other facts from `pool`, written once all true (label true) and once
/// all false (label false), then the fact as [`ProbeAt`] says.
pub fn probed_texts(
    all: &[Fact],
    ids: &[usize],
    pool: &[usize],
    r: &SteerItiRecipe,
    rng: &mut Rng,
) -> Vec<(String, bool)> {
    let mut texts = Vec::new();
    for &i in ids.iter().flat_map(|i| std::iter::repeat_n(i, r.contexts_per_fact)) {
        let mut others: Vec<usize> = pool.iter().copied().filter(|&j| j != i).collect();
        rng.shuffle(&mut others);
        let context: Vec<&Fact> = others.iter().take(r.context_statements).map(|&j| &all[j]).collect();
        for truth in [true, false] {
            let answer = |f: &Fact| if truth { f.truth.clone() } else { f.falsehood.clone() };
            let mut text: String = context.iter().map(|f| format!("{}{}. ", f.prompt, answer(f))).collect();
            match r.probe_at {
                ProbeAt::NextPrompt => text.push_str(&all[i].prompt),
                ProbeAt::Statement => text.push_str(&format!("{}{}", all[i].prompt, answer(&all[i]))),
            }
            texts.push((text, truth));
        }
    }
    texts
}

/// The prompt's ids up to where the true and false answers part, and the first token of each
/// from there (` 5` and ` 7` share a leading space token under digit splitting).
pub(super) fn answer_choice(tok: &TextTokenizer, fact: &Fact) -> Result<(Vec<u32>, u32, u32)> {
    let (t, f) = (tok.encode_plain(&fact.truth)?, tok.encode_plain(&fact.falsehood)?);
    let common = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let (Some(&ti), Some(&fi)) = (t.get(common), f.get(common)) else {
        bail!("the answers {:?} and {:?} of {:?} do not part", fact.truth, fact.falsehood, fact.prompt);
    };
    let mut ids = tok.encode(&fact.prompt)?;
    ids.extend(&t[..common]);
    Ok((ids, ti, fi))
}
