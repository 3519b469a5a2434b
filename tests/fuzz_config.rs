//! Fuzzing the Hugging Face folder loader: 10,000 random mutations of the tiny GPT-2, GPT-NeoX
//! and Llama checkpoints' `config.json` (the JSON a hub download brings), each loaded with its
//! weights. The answer is a model or an error naming the file, never a panic or an abort (a
//! mutated size must not make the loader allocate before checking it against the weights).

use ferrovene_models::rng::Rng;

type B = ferrovene_models::Cpu;

fn cases() -> usize {
    std::env::var("FERROVENE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000)
}

#[test]
fn mutated_configs_never_panic() {
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/tiny");
    let dir = std::env::temp_dir().join(format!("ferrovene-fuzz-config-{}", std::process::id()));
    let archs = ["gpt2", "gpt_neox", "llama"];
    let mut seeds = Vec::new();
    for arch in archs {
        let src = golden.join(arch);
        assert!(
            src.join("config.json").exists(),
            "golden files missing: this test reads tests/golden/tiny/{arch} (copied from ../shared/golden)"
        );
        let folder = dir.join(arch);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::copy(src.join("model.safetensors"), folder.join("model.safetensors")).unwrap();
        seeds.push((folder, std::fs::read(src.join("config.json")).unwrap()));
    }
    let mut rng = Rng::new(19);
    let mut loaded = 0;
    for case in 0..cases() {
        let (folder, seed) = &seeds[rng.below(seeds.len())];
        let bytes = rng.mutated(seed);
        std::fs::write(folder.join("config.json"), &bytes).unwrap();
        match std::panic::catch_unwind(|| ferrovene_models::load_folder::<B>(folder, &Default::default()).is_ok()) {
            Ok(ok) => loaded += ok as usize,
            Err(_) => panic!("case {case} panicked on config.json:\n{}", String::from_utf8_lossy(&bytes)),
        }
    }
    assert!(loaded > cases() / 20, "only {loaded} of {} mutated configs loaded", cases());
}
