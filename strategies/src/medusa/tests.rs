//! Medusa on the toy model: exactness against the autoregressive baselines on every tree, the
//! ends of typical acceptance, stops, records, and the heads' arithmetic and file format.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::*;
use crate::autoregressive;
use crate::sampler::{Sampler, SamplingConfig};
use crate::toy::ToyModel;

const PROMPTS: [&[u32]; 3] = [&[1, 2, 3], &[7], &[5, 4, 3, 2, 1, 0, 9, 8]];

fn all_trees(num_heads: usize) -> Vec<TreeTopology> {
    let mut specs: Vec<String> = SHIPPED_TREES.iter().map(|s| s.to_string()).collect();
    specs.extend(["chain:4".to_string(), "dense:2x3".to_string()]);
    specs.iter().map(|s| TreeTopology::parse(s, num_heads, DEFAULT_MAX_TOP_K).unwrap()).collect()
}

fn stop(max_new_tokens: usize) -> StopConfig {
    StopConfig { max_new_tokens, eos_token_ids: vec![] }
}

fn greedy_sampler() -> Sampler {
    Sampler::new(SamplingConfig::greedy())
}

fn sampler_at(temperature: f64, seed: u64) -> Sampler {
    Sampler::new(SamplingConfig { temperature, top_k: None, top_p: None, seed })
}

fn run(
    model: &mut ToyModel,
    heads: &MedusaHeads,
    prompt: &[u32],
    stop: &StopConfig,
    tree: &TreeTopology,
    acceptance: AcceptanceRule,
    sampler: &mut Sampler,
) -> Generation {
    let config = MedusaConfig { tree: tree.clone(), acceptance };
    let mut streamed = Vec::new();
    let g = generate(model, heads, prompt, stop, &config, sampler, &mut |t| streamed.push(t)).unwrap();
    assert_eq!(streamed, g.tokens, "on_token sees every output token in order");
    g
}

/// Checks the records against the output: one record per forward after prefill, tokens per
/// record add up, the forward sizes match the tree.
fn check_records(g: &Generation, forwards: usize, tree: &TreeTopology) {
    assert_eq!(g.steps.len() + 1, forwards, "one record per tree forward");
    let accepted: usize = g.steps.iter().map(|s| s.tokens_accepted).sum();
    assert_eq!(accepted + 1, g.tokens.len(), "records add up to the output (the first token comes from prefill)");
    for s in &g.steps {
        assert_eq!(s.forward_tokens, s.tokens_proposed + 1);
        assert!(s.tokens_proposed <= tree.len());
        assert!(s.accepted_depth <= tree.depth());
        assert!(s.tokens_accepted <= s.accepted_depth + 1);
    }
    if !g.steps.is_empty() {
        let mean = (g.tokens.len() - 1) as f64 / g.steps.len() as f64;
        assert!((g.mean_accepted_tokens() - mean).abs() < 1e-12);
    }
}

/// Greedy acceptance reproduces greedy decoding token for token on every tree, with Medusa-2
/// (shared lm_head) and Medusa-1 (own projection) random heads, on a vocabulary small enough
/// that the top-10 candidates often contain the target's choice (deep paths get accepted) and on
/// a larger one (mostly bonus tokens).
#[test]
fn greedy_acceptance_reproduces_greedy_on_every_tree() {
    let dev = Device::Cpu;
    let mut deepest = 0;
    for (vocab, seed) in [(12usize, 3u64), (300, 5)] {
        for layout in [HeadLayout::SharedLmHead, HeadLayout::OwnProjection] {
            let heads = MedusaHeads::random(5, 8, vocab, layout, 42, &dev).unwrap();
            for tree in all_trees(5) {
                for prompt in PROMPTS {
                    let mut model = ToyModel::hashed(vocab, seed, &dev);
                    let reference = autoregressive::greedy(&mut model, prompt, &stop(128), &mut |_| {}).unwrap();
                    model.forwards = 0;
                    let g = run(&mut model, &heads, prompt, &stop(128), &tree, AcceptanceRule::Greedy, &mut greedy_sampler());
                    assert_eq!(g.tokens, reference.tokens, "vocab {vocab}, {layout:?}, tree {}, prompt {prompt:?}", tree.name());
                    assert_eq!(g.stop, StopReason::MaxTokens);
                    check_records(&g, model.forwards, &tree);
                    deepest = deepest.max(g.steps.iter().map(|s| s.accepted_depth).max().unwrap_or(0));
                    // Typical acceptance at temperature 0 is greedy acceptance.
                    let mut model = ToyModel::hashed(vocab, seed, &dev);
                    let t = run(&mut model, &heads, prompt, &stop(128), &tree, AcceptanceRule::typical(), &mut greedy_sampler());
                    assert_eq!(t.tokens, reference.tokens, "typical at T=0, tree {}", tree.name());
                }
            }
        }
    }
    assert!(deepest >= 3, "the test should exercise deep accepted paths (deepest {deepest})");
}

/// At temperature > 0 the greedy rule matches the target's draws, one per output token in
/// order, so it reproduces autoregressive sampling with the same seed exactly.
#[test]
fn greedy_rule_at_temperature_reproduces_sampling() {
    let dev = Device::Cpu;
    let heads = MedusaHeads::random(5, 8, 12, HeadLayout::SharedLmHead, 1, &dev).unwrap();
    for tree in [TreeTopology::parse("mc_sim_7b_63", 5, 10).unwrap(), TreeTopology::parse("dense:2x3", 5, 10).unwrap()] {
        for (temperature, top_p) in [(0.8, None), (1.3, Some(0.9))] {
            for prompt in PROMPTS {
                let config = SamplingConfig { temperature, top_k: None, top_p, seed: 17 };
                let mut model = ToyModel::hashed(12, 9, &dev);
                let reference =
                    autoregressive::sample(&mut model, prompt, &stop(128), &mut Sampler::new(config.clone()), &mut |_| {}).unwrap();
                let mut model = ToyModel::hashed(12, 9, &dev);
                let g = run(&mut model, &heads, prompt, &stop(128), &tree, AcceptanceRule::Greedy, &mut Sampler::new(config));
                assert_eq!(g.tokens, reference.tokens, "T {temperature}, top-p {top_p:?}, tree {}", tree.name());
                assert!(g.steps.len() < 127, "some candidates are accepted");
            }
        }
    }
}

/// Threshold 0 (ε = α = 0): every candidate with p > 0 passes, so every step accepts the
/// deepest path of the tree. The budget 1 + 10·(D + 1) makes every step a full one.
#[test]
fn typical_with_zero_threshold_accepts_the_deepest_path() {
    let dev = Device::Cpu;
    let heads = MedusaHeads::random(5, 8, 300, HeadLayout::SharedLmHead, 2, &dev).unwrap();
    for tree in all_trees(5) {
        let d = tree.depth();
        let budget = 1 + 10 * (d + 1);
        let mut model = ToyModel::hashed(300, 4, &dev);
        let rule = AcceptanceRule::Typical { epsilon: 0.0, alpha: 0.0 };
        let g = run(&mut model, &heads, &[1, 2, 3], &stop(budget), &tree, rule, &mut sampler_at(1.0, 3));
        assert_eq!(g.tokens.len(), budget);
        assert_eq!(g.steps.len(), 10, "tree {}", tree.name());
        for s in &g.steps {
            assert_eq!((s.accepted_depth, s.tokens_accepted), (d, d + 1), "tree {}", tree.name());
        }
        check_records(&g, model.forwards, &tree);
        // The accepted path is the deepest node first in block order: the output after the first
        // token is that node's candidates, so the cache holds exactly root + path.
        assert_eq!(model.sequence(0).len(), 3 + budget - 1);
        assert_eq!(&model.sequence(0)[3..], &g.tokens[..budget - 1]);
    }
}

/// Threshold above every probability (ε = 1, α huge): nothing is accepted, each step keeps only
/// its bonus token.
#[test]
fn typical_with_high_threshold_keeps_only_the_bonus() {
    let dev = Device::Cpu;
    let heads = MedusaHeads::random(5, 8, 12, HeadLayout::SharedLmHead, 2, &dev).unwrap();
    for tree in all_trees(5) {
        let mut model = ToyModel::hashed(12, 4, &dev);
        let rule = AcceptanceRule::Typical { epsilon: 1.0, alpha: 1e9 };
        let g = run(&mut model, &heads, &[1, 2, 3], &stop(40), &tree, rule, &mut sampler_at(0.7, 3));
        assert_eq!(g.tokens.len(), 40);
        assert_eq!(g.steps.len(), 39);
        assert!(g.steps.iter().all(|s| s.accepted_depth == 0 && s.tokens_accepted == 1), "tree {}", tree.name());
        check_records(&g, model.forwards, &tree);
    }
}

/// Typical acceptance with Medusa's defaults at temperature > 0 runs, is seeded, and keeps the
/// cache equal to prompt + output minus the pending root.
#[test]
fn typical_defaults_are_seeded_and_keep_the_cache_consistent() {
    let dev = Device::Cpu;
    let heads = MedusaHeads::random(5, 8, 12, HeadLayout::SharedLmHead, 2, &dev).unwrap();
    let tree = TreeTopology::parse("mc_sim_7b_63", 5, 10).unwrap();
    let mut outs = Vec::new();
    for _ in 0..2 {
        let mut model = ToyModel::hashed(12, 4, &dev);
        let g = run(&mut model, &heads, &[1, 2, 3], &stop(100), &tree, AcceptanceRule::typical(), &mut sampler_at(0.7, 11));
        assert_eq!(g.tokens.len(), 100);
        let seq = model.sequence(0);
        assert_eq!(&seq[..3], &[1, 2, 3]);
        assert_eq!(&seq[3..], &g.tokens[..seq.len() - 3], "cache = prompt + accepted output");
        check_records(&g, model.forwards, &tree);
        assert!(g.mean_accepted_tokens() > 1.0);
        outs.push(g.tokens);
    }
    assert_eq!(outs[0], outs[1]);
}

/// Near a full context the tree shrinks to what fits, down to a one-token step; Medusa stops
/// with ContextFull exactly where greedy does, with the same tokens.
#[test]
fn context_full_shrinks_the_tree_and_stops_like_greedy() {
    let dev = Device::Cpu;
    let heads = MedusaHeads::random(5, 8, 12, HeadLayout::SharedLmHead, 5, &dev).unwrap();
    // A toy model like `ToyModel::hashed` but with a small context.
    let f: crate::toy::LogitsFn = Arc::new(|seq: &[u32]| {
        let h = seq.iter().fold(17u64, |h, &t| (h ^ t as u64).wrapping_mul(0x100_0000_01B3).rotate_left(13));
        (0..12u64).map(|v| ((h ^ v.wrapping_mul(0x9E37_79B9)).wrapping_mul(0xBF58_476D_1CE4_E5B9) >> 40) as f32 / 1e6).collect()
    });
    for tree in all_trees(5) {
        for max_context in [40usize, 75, 100] {
            let mut model = ToyModel::new(12, max_context, f.clone(), &dev);
            let reference = autoregressive::greedy(&mut model, &[1, 2, 3], &stop(500), &mut |_| {}).unwrap();
            assert_eq!(reference.stop, StopReason::ContextFull);
            let mut model = ToyModel::new(12, max_context, f.clone(), &dev);
            let g = run(&mut model, &heads, &[1, 2, 3], &stop(500), &tree, AcceptanceRule::Greedy, &mut greedy_sampler());
            assert_eq!(g.tokens, reference.tokens, "tree {}, context {max_context}", tree.name());
            assert_eq!(g.stop, StopReason::ContextFull);
            assert_eq!(g.steps.last().unwrap().forward_tokens, 1, "the last step is a plain one-token step");
            check_records(&g, model.forwards, &tree);
        }
    }
}

/// An EOS inside an accepted path ends generation right there, with greedy's tokens; the token
/// budget cuts a step the same way and the tree shrinks to paths that can still be used.
#[test]
fn eos_and_budget_end_generation_inside_a_path() {
    let dev = Device::Cpu;
    let heads = MedusaHeads::random(5, 8, 12, HeadLayout::SharedLmHead, 42, &dev).unwrap();
    let tree = TreeTopology::parse("mc_sim_7b_63", 5, 10).unwrap();
    let mut cut_inside_path = false;
    for prompt in PROMPTS {
        let mut model = ToyModel::hashed(12, 3, &dev);
        let full = autoregressive::greedy(&mut model, prompt, &stop(128), &mut |_| {}).unwrap();
        for eos in 0..12u32 {
            let Some(at) = full.tokens.iter().position(|&t| t == eos) else { continue };
            let stop = StopConfig { max_new_tokens: 128, eos_token_ids: vec![eos] };
            let mut model = ToyModel::hashed(12, 3, &dev);
            let g = run(&mut model, &heads, prompt, &stop, &tree, AcceptanceRule::Greedy, &mut greedy_sampler());
            assert_eq!(g.tokens, &full.tokens[..=at], "eos {eos}, prompt {prompt:?}");
            assert_eq!(g.stop, StopReason::Eos);
            let last = g.steps.last();
            cut_inside_path |= last.is_some_and(|s| s.tokens_accepted < s.accepted_depth + 1);
            check_records(&g, model.forwards, &tree);
        }
        for budget in [1usize, 2, 3, 7, 50] {
            let mut model = ToyModel::hashed(12, 3, &dev);
            let g = run(&mut model, &heads, prompt, &stop(budget), &tree, AcceptanceRule::Greedy, &mut greedy_sampler());
            assert_eq!(g.tokens, &full.tokens[..budget]);
            assert_eq!(g.stop, StopReason::MaxTokens);
            check_records(&g, model.forwards, &tree);
            for (i, s) in g.steps.iter().enumerate() {
                let emitted: usize = 1 + g.steps[..i].iter().map(|s| s.tokens_accepted).sum::<usize>();
                let wanted = budget - emitted;
                assert!(s.accepted_depth < wanted, "a step never proposes paths past the budget");
            }
        }
    }
    assert!(cut_inside_path, "some EOS should fall inside an accepted path");
}

#[test]
fn bad_configurations_are_named() {
    let dev = Device::Cpu;
    let heads = MedusaHeads::random(3, 8, 12, HeadLayout::SharedLmHead, 1, &dev).unwrap();
    let deep = TreeTopology::parse("chain:4", 4, 10).unwrap();
    let mut model = ToyModel::hashed(12, 1, &dev);
    let config = MedusaConfig { tree: deep, acceptance: AcceptanceRule::Greedy };
    let e = generate(&mut model, &heads, &[1], &stop(5), &config, &mut greedy_sampler(), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("chain:4") && e.to_string().contains("only 3"), "{e}");

    let mut small = ToyModel::hashed(6, 1, &dev);
    let config = MedusaConfig { tree: TreeTopology::parse("dense:8x1", 3, 10).unwrap(), acceptance: AcceptanceRule::Greedy };
    let e = generate(&mut small, &heads, &[1], &stop(5), &config, &mut greedy_sampler(), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("top-8") && e.to_string().contains("vocabulary"), "{e}");

    let wide = MedusaHeads::random(3, 16, 12, HeadLayout::SharedLmHead, 1, &dev).unwrap();
    let config = MedusaConfig { tree: TreeTopology::parse("chain:2", 3, 10).unwrap(), acceptance: AcceptanceRule::Greedy };
    let e = generate(&mut model, &wide, &[1], &stop(5), &config, &mut greedy_sampler(), &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("hidden size 16"), "{e}");
}

// ---- heads ----

fn host2(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

/// Reference Medusa-1 head on the host: ResBlocks then the projection.
fn reference_head(x: &[f32], blocks: &[(Vec<Vec<f32>>, Vec<f32>)], proj: &[Vec<f32>]) -> Vec<f32> {
    let mut x = x.to_vec();
    for (w, b) in blocks {
        let y: Vec<f32> = w
            .iter()
            .zip(b)
            .map(|(row, bias)| {
                let z = row.iter().zip(&x).map(|(a, b)| a * b).sum::<f32>() + bias;
                z / (1.0 + (-z).exp())
            })
            .collect();
        x = x.iter().zip(&y).map(|(a, b)| a + b).collect();
    }
    proj.iter().map(|row| row.iter().zip(&x).map(|(a, b)| a * b).sum()).collect()
}

fn matrix(rows: usize, cols: usize, salt: f32) -> Vec<Vec<f32>> {
    (0..rows).map(|r| (0..cols).map(|c| ((r * cols + c) as f32 * 0.37 + salt).sin() * 0.5).collect()).collect()
}

/// Writes official-layout heads: `{i}.{j}.linear.{weight,bias}` and, when `vocab` is set, the
/// own projection `{i}.{n_res}.weight`.
fn write_heads(path: &std::path::Path, k: usize, n_res: usize, hidden: usize, vocab: Option<usize>) -> HashMap<String, Tensor> {
    let dev = Device::Cpu;
    let mut map = HashMap::new();
    for i in 0..k {
        for j in 0..n_res {
            let w = matrix(hidden, hidden, (i * 10 + j) as f32);
            let b = matrix(1, hidden, (i * 10 + j) as f32 + 0.5).remove(0);
            map.insert(format!("{i}.{j}.linear.weight"), Tensor::new(w, &dev).unwrap());
            map.insert(format!("{i}.{j}.linear.bias"), Tensor::new(b, &dev).unwrap());
        }
        if let Some(v) = vocab {
            map.insert(format!("{i}.{n_res}.weight"), Tensor::new(matrix(v, hidden, i as f32 + 0.25), &dev).unwrap());
        }
    }
    candle_core::safetensors::save(&map, path).unwrap();
    map
}

#[test]
fn loaded_heads_compute_resblocks_and_projection() {
    let dev = Device::Cpu;
    let dir = std::env::temp_dir().join(format!("medusa-heads-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = ToyModel::hashed(12, 1, &dev);
    let x: Vec<f32> = (0..8).map(|i| (i as f32 * 0.7).cos()).collect();
    let hidden = Tensor::from_vec(x.clone(), (1, 1, 8), &dev).unwrap();

    // Medusa-1, two ResBlocks per head (the format allows n ≥ 1).
    let path = dir.join(HEADS_FILE);
    let map = write_heads(&path, 3, 2, 8, Some(12));
    let heads = MedusaHeads::load(&dir, &dev).unwrap(); // the folder works too
    assert_eq!(
        (heads.num_heads(), heads.num_res_blocks(), heads.layout(), heads.vocab_size()),
        (3, 2, HeadLayout::OwnProjection, Some(12))
    );
    let logits = host2(&heads.logits(&hidden, &model).unwrap());
    assert_eq!(logits.len(), 3);
    for (i, row) in logits.iter().enumerate() {
        let blocks: Vec<(Vec<Vec<f32>>, Vec<f32>)> = (0..2)
            .map(|j| (host2(&map[&format!("{i}.{j}.linear.weight")]), map[&format!("{i}.{j}.linear.bias")].to_vec1().unwrap()))
            .collect();
        let expected = reference_head(&x, &blocks, &host2(&map[&format!("{i}.2.weight")]));
        for (a, b) in row.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-4, "head {i}: {row:?} vs {expected:?}");
        }
    }

    // Medusa-2: no projection in the file, the model's lm_head projects.
    let path2 = dir.join("v2.safetensors");
    let map = write_heads(&path2, 2, 1, 8, None);
    let heads = MedusaHeads::load(&path2, &dev).unwrap();
    assert_eq!((heads.num_heads(), heads.layout(), heads.vocab_size()), (2, HeadLayout::SharedLmHead, None));
    let logits = heads.logits(&hidden, &model).unwrap();
    assert_eq!(logits.dims(), &[2, 12]);
    let w = host2(&map["1.0.linear.weight"]);
    let b: Vec<f32> = map["1.0.linear.bias"].to_vec1().unwrap();
    let identity: Vec<Vec<f32>> = (0..8).map(|r| (0..8).map(|c| if r == c { 1.0 } else { 0.0 }).collect()).collect();
    let h1 = reference_head(&x, &[(w, b)], &identity);
    let expected = model.lm_head(&Tensor::from_vec(h1, (1, 8), &dev).unwrap()).unwrap();
    let (got, want) = (host2(&logits)[1].clone(), host2(&expected)[0].clone());
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() < 1e-4, "{got:?} vs {want:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_head_files_name_the_file_and_key() {
    let dev = Device::Cpu;
    let dir = std::env::temp_dir().join(format!("medusa-badheads-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let t = |shape: &[usize]| Tensor::zeros(shape, candle_core::DType::F32, &dev).unwrap();
    // (file name, tensors, what the error must mention)
    type Case<'a> = (&'a str, Vec<(&'a str, Tensor)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        ("nobias", vec![("0.0.linear.weight", t(&[4, 4]))], vec!["0.0.linear.bias", "missing"]),
        (
            "stray",
            vec![("0.0.linear.weight", t(&[4, 4])), ("0.0.linear.bias", t(&[4])), ("foo.bar", t(&[1]))],
            vec!["foo.bar", "unexpected key"],
        ),
        ("shape", vec![("0.0.linear.weight", t(&[4, 5])), ("0.0.linear.bias", t(&[4]))], vec!["0.0.linear.weight", "shape"]),
        (
            "mixed",
            vec![
                ("0.0.linear.weight", t(&[4, 4])),
                ("0.0.linear.bias", t(&[4])),
                ("0.1.weight", t(&[10, 4])),
                ("1.0.linear.weight", t(&[4, 4])),
                ("1.0.linear.bias", t(&[4])),
            ],
            vec!["head 1", "1.1.weight"],
        ),
        (
            "gap",
            vec![
                ("0.0.linear.weight", t(&[4, 4])),
                ("0.0.linear.bias", t(&[4])),
                ("2.0.linear.weight", t(&[4, 4])),
                ("2.0.linear.bias", t(&[4])),
            ],
            vec!["head 1"],
        ),
    ];
    for (name, tensors, needles) in cases {
        let path = dir.join(format!("{name}.safetensors"));
        let map: HashMap<String, Tensor> = tensors.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        candle_core::safetensors::save(&map, &path).unwrap();
        let e = MedusaHeads::load(&path, &dev).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{name}: {e}");
        for n in needles {
            assert!(e.contains(n), "{name}: `{n}` not in: {e}");
        }
    }
    let missing = dir.join("nope.safetensors");
    let e = MedusaHeads::load(&missing, &dev).unwrap_err().to_string();
    assert!(e.contains("nope.safetensors") && e.contains("no such file"), "{e}");
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file").unwrap();
    let e = MedusaHeads::load(&garbage, &dev).unwrap_err().to_string();
    assert!(e.contains("garbage.safetensors"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn random_heads_are_seeded_and_from_spec_parses() {
    let dev = Device::Cpu;
    let model = ToyModel::hashed(12, 1, &dev);
    let hidden = Tensor::from_vec((0..8).map(|i| i as f32 * 0.1).collect::<Vec<f32>>(), 8, &dev).unwrap();
    let a = MedusaHeads::random(4, 8, 12, HeadLayout::SharedLmHead, 7, &dev).unwrap();
    let b = MedusaHeads::random(4, 8, 12, HeadLayout::SharedLmHead, 7, &dev).unwrap();
    let c = MedusaHeads::random(4, 8, 12, HeadLayout::SharedLmHead, 8, &dev).unwrap();
    let (la, lb, lc) = (
        host2(&a.logits(&hidden, &model).unwrap()),
        host2(&b.logits(&hidden, &model).unwrap()),
        host2(&c.logits(&hidden, &model).unwrap()),
    );
    assert_eq!(la, lb);
    assert_ne!(la, lc);
    assert_ne!(la[0], la[1], "heads differ from each other");
    let own = MedusaHeads::random(2, 8, 12, HeadLayout::OwnProjection, 7, &dev).unwrap();
    assert_eq!(own.logits(&hidden, &model).unwrap().dims(), &[2, 12]);

    let info = model.info().clone();
    let h = MedusaHeads::from_spec("random:5", &info, 0, &dev).unwrap();
    assert_eq!((h.num_heads(), h.hidden_size(), h.layout()), (5, 8, HeadLayout::SharedLmHead));
    assert!(MedusaHeads::from_spec("random:0", &info, 0, &dev).unwrap_err().to_string().contains("random:K"));
    assert!(MedusaHeads::from_spec("/no/such/heads.safetensors", &info, 0, &dev)
        .unwrap_err()
        .to_string()
        .contains("/no/such/heads.safetensors"));
    let e = a.logits(&Tensor::zeros((2, 8), candle_core::DType::F32, &dev).unwrap(), &model).unwrap_err();
    assert!(e.to_string().contains("one hidden state"), "{e}");
}

/// On the CPU the heads run from Q8_0 copies of their weights: close to the f32 arithmetic, with
/// the same best candidate nearly everywhere, and a row's logits the same bits alone or among
/// other rows (so scoring a corpus gives what decoding gives).
#[test]
fn packed_heads_follow_the_f32_heads() {
    let dev = Device::Cpu;
    let model = ToyModel::hashed(300, 1, &dev);
    let heads = MedusaHeads::random(4, 64, 300, HeadLayout::OwnProjection, 3, &dev).unwrap();
    assert!(heads.is_packed());
    let f32_heads = heads.unpacked();
    assert!(!f32_heads.is_packed());
    // Small heads (hidden 8) are not a whole Q8_0 block: f32.
    assert!(!MedusaHeads::random(4, 8, 300, HeadLayout::OwnProjection, 3, &dev).unwrap().is_packed());
    let n = 40;
    let values: Vec<f32> = (0..n * 64).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 2.0).collect();
    let hidden = Tensor::from_vec(values, (n, 64), &dev).unwrap();
    let packed = heads.logits_rows(&hidden, &model).unwrap();
    let exact = f32_heads.logits_rows(&hidden, &model).unwrap();
    assert_eq!(packed.dims(), exact.dims());
    let (p, e) = (packed.flatten_all().unwrap().to_vec1::<f32>().unwrap(), exact.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    let scale = e.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = p.iter().zip(&e).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst < 0.03 * scale, "Q8_0 heads off by {worst} on logits up to {scale}");
    let argmax = |t: &Tensor| t.argmax(candle_core::D::Minus1).unwrap().flatten_all().unwrap().to_vec1::<u32>().unwrap();
    let same = argmax(&packed).iter().zip(argmax(&exact)).filter(|(a, b)| **a == *b).count();
    assert!(same * 10 >= 9 * 4 * n, "best candidate agrees on {same} of {} rows", 4 * n);
    for r in [0, 17, n - 1] {
        let alone = heads.logits(&hidden.narrow(0, r, 1).unwrap(), &model).unwrap();
        let among = packed.narrow(1, r, 1).unwrap().squeeze(1).unwrap();
        assert_eq!(alone.to_vec2::<f32>().unwrap(), among.to_vec2::<f32>().unwrap(), "row {r}");
    }
}
