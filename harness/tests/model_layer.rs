//! The model layer's contract on tiny random models written by the tests (GGUF with Q8_0 and
//! Q4_K weights, and safetensors): tree forward = path forward, truncate / compact / reorder of
//! the KV cache = recomputation.

use candle_core::{Device, Tensor};
use decodebench::models::{gguf::GgufFile, safetensors, Transformer};
use decodebench::testing::{write_gguf, write_hf_dir, TinySpec};
use decodebench_strategies::{BlockAttention, DecoderModel, ForwardInput, LogitRows};

const TOL: f32 = 1e-4;

fn load_gguf(spec: &TinySpec, dir: &tempfile::TempDir) -> Transformer {
    let path = dir.path().join(format!("{}-{:?}.gguf", spec.arch, spec.weight_type));
    write_gguf(spec, &path).unwrap();
    GgufFile::open(&path).unwrap().load_transformer("tiny".into(), &Device::Cpu).unwrap()
}

fn load_hf(spec: &TinySpec, dir: &tempfile::TempDir) -> Transformer {
    let path = dir.path().join(format!("{}-hf", spec.arch));
    write_hf_dir(spec, &path).unwrap();
    safetensors::load_transformer(&path, "tiny".into(), None, &Device::Cpu).unwrap()
}

/// Every model kind the loaders produce.
fn all_models() -> Vec<(String, Transformer)> {
    let dir = tempfile::tempdir().unwrap();
    vec![
        ("gguf llama Q8_0".into(), load_gguf(&TinySpec::llama(), &dir)),
        ("gguf qwen2 Q8_0".into(), load_gguf(&TinySpec::qwen2(), &dir)),
        ("gguf qwen2 Q4_K".into(), load_gguf(&TinySpec::qwen2_k_quants(), &dir)),
        ("safetensors llama f32".into(), load_hf(&TinySpec::llama(), &dir)),
        ("safetensors qwen2 f32".into(), load_hf(&TinySpec::qwen2(), &dir)),
    ]
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32).map(|i| (i * 37 + salt * 11 + 5) % 250).collect()
}

/// Forward of a causal block appended to the current cache; logits of every row `(n, vocab)`.
fn causal(model: &mut dyn DecoderModel, tokens: &[u32]) -> Tensor {
    let start = model.cache_len();
    let positions: Vec<usize> = (start..start + tokens.len()).collect();
    let out = model.forward(&ForwardInput::causal(tokens, &positions, LogitRows::All)).unwrap();
    out.logits.squeeze(0).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn row(t: &Tensor, i: usize) -> Tensor {
    t.get(i).unwrap()
}

/// A 10-node tree with two roots and branching at several depths.
fn tree() -> (Vec<u32>, Vec<Option<usize>>) {
    let parents = vec![None, Some(0), Some(0), Some(1), Some(1), Some(2), Some(3), None, Some(7), Some(6)];
    let tokens = vec![17, 42, 99, 3, 250, 64, 128, 7, 200, 11];
    (tokens, parents)
}

fn path_to(parents: &[Option<usize>], node: usize) -> Vec<usize> {
    let mut path = vec![node];
    while let Some(p) = parents[*path.last().unwrap()] {
        path.push(p);
    }
    path.reverse();
    path
}

fn tree_forward(model: &mut dyn DecoderModel, tokens: &[u32], parents: &[Option<usize>]) -> Tensor {
    let attention = BlockAttention::Tree { parents: parents.to_vec() };
    let start = model.cache_len();
    let positions: Vec<usize> = attention.depths(tokens.len()).iter().map(|d| start + d).collect();
    let input = ForwardInput { tokens, batch: 1, positions: &positions, attention: &attention, rows: LogitRows::All };
    model.forward(&input).unwrap().logits.squeeze(0).unwrap()
}

#[test]
fn tree_forward_matches_each_root_to_node_path() {
    let (tokens, parents) = tree();
    for (name, mut model) in all_models() {
        let p = prompt(12, 1);
        causal(&mut model, &p);
        let tree_logits = tree_forward(&mut model, &tokens, &parents);
        for node in 0..tokens.len() {
            model.truncate_cache(p.len()).unwrap();
            let path = path_to(&parents, node);
            let path_tokens: Vec<u32> = path.iter().map(|&i| tokens[i]).collect();
            let path_logits = causal(&mut model, &path_tokens);
            let diff = max_abs_diff(&row(&tree_logits, node), &row(&path_logits, path.len() - 1));
            assert!(diff <= TOL, "{name}: node {node} (path {path:?}) differs from its path forward by {diff}");
        }
    }
}

#[test]
fn truncate_then_continue_equals_recomputation() {
    for (name, mut model) in all_models() {
        let p = prompt(20, 2);
        causal(&mut model, &p);
        causal(&mut model, &[5, 6, 7, 8, 9]);
        model.truncate_cache(p.len() - 4).unwrap();
        assert_eq!(model.cache_len(), 16);
        let continued = causal(&mut model, &[30, 31, 32]);

        model.clear_cache();
        let mut fresh = p[..16].to_vec();
        fresh.extend([30, 31, 32]);
        let scratch = causal(&mut model, &fresh);
        let diff = max_abs_diff(&continued, &scratch.narrow(0, 16, 3).unwrap());
        assert!(diff <= TOL, "{name}: truncate+continue differs from recomputation by {diff}");
    }
}

#[test]
fn compact_accepted_path_then_continue_equals_recomputation() {
    let (tokens, parents) = tree();
    for (name, mut model) in all_models() {
        let p = prompt(9, 3);
        causal(&mut model, &p);
        tree_forward(&mut model, &tokens, &parents);
        // Accept the path 0 → 1 → 3 → 6 → 9.
        let path = path_to(&parents, 9);
        assert_eq!(path, [0, 1, 3, 6, 9]);
        model.compact_cache(p.len(), &path).unwrap();
        assert_eq!(model.cache_len(), p.len() + path.len());
        let continued = causal(&mut model, &[77, 78]);

        model.clear_cache();
        let mut fresh = p.clone();
        fresh.extend(path.iter().map(|&i| tokens[i]));
        fresh.extend([77, 78]);
        let scratch = causal(&mut model, &fresh);
        let diff = max_abs_diff(&continued, &scratch.narrow(0, fresh.len() - 2, 2).unwrap());
        assert!(diff <= TOL, "{name}: compact+continue differs from recomputation by {diff}");
    }
}

fn batch_forward(model: &mut dyn DecoderModel, rows: &[Vec<u32>]) -> Tensor {
    let n = rows[0].len();
    let tokens: Vec<u32> = rows.concat();
    let start = model.cache_len();
    let positions: Vec<usize> = (start..start + n).collect();
    let input = ForwardInput {
        tokens: &tokens,
        batch: rows.len(),
        positions: &positions,
        attention: &BlockAttention::Causal,
        rows: LogitRows::Last,
    };
    model.forward(&input).unwrap().logits
}

#[test]
fn reorder_of_batch_rows_is_exact() {
    for (name, mut model) in all_models() {
        let prompts = [prompt(8, 4), prompt(8, 5), prompt(8, 6)];
        let next = vec![vec![1], vec![2], vec![3]];
        // Reordered cache, then one more token per row...
        batch_forward(&mut model, &prompts);
        model.reorder_cache(&[2, 0, 0]).unwrap();
        assert_eq!(model.cache_batch(), 3);
        let reordered = batch_forward(&mut model, &next);
        // ...equals the cache built in that order from the start.
        model.clear_cache();
        batch_forward(&mut model, &[prompts[2].clone(), prompts[0].clone(), prompts[0].clone()]);
        let direct = batch_forward(&mut model, &next);
        let a: Vec<f32> = reordered.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = direct.flatten_all().unwrap().to_vec1().unwrap();
        assert!(a == b, "{name}: reordered cache is not bit-identical (max diff {})", max_abs_diff(&reordered, &direct));
    }
}

#[test]
fn batch_rows_match_single_sequences() {
    for (name, mut model) in all_models() {
        let prompts = [prompt(6, 7), prompt(6, 8)];
        let batched = batch_forward(&mut model, &prompts);
        for (i, p) in prompts.iter().enumerate() {
            model.clear_cache();
            let single = batch_forward(&mut model, std::slice::from_ref(p));
            let diff = max_abs_diff(&batched.get(i).unwrap(), &single.get(0).unwrap());
            assert!(diff <= TOL, "{name}: batch row {i} differs from its own forward by {diff}");
        }
    }
}

#[test]
fn forward_returns_hidden_states_and_rejects_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec::llama();
    let mut model = load_gguf(&spec, &dir);
    let p = prompt(5, 9);
    let positions: Vec<usize> = (0..5).collect();
    let out = model.forward(&ForwardInput::causal(&p, &positions, LogitRows::All)).unwrap();
    assert_eq!(out.hidden.dims(), &[1, 5, spec.hidden]);
    assert_eq!(out.logits.dims(), &[1, 5, model.info().vocab_size]);
    // The lm_head applied to the hidden states gives the logits back.
    let again = model.lm_head(&out.hidden).unwrap();
    assert!(max_abs_diff(&again, &out.logits) <= TOL);

    let long = vec![1u32; spec.context];
    let positions: Vec<usize> = (5..5 + long.len()).collect();
    let err = model.forward(&ForwardInput::causal(&long, &positions, LogitRows::Last)).unwrap_err().to_string();
    assert!(err.contains("exceeds the context"), "{err}");
    let bad_tree = BlockAttention::Tree { parents: vec![None, Some(1)] };
    let input = ForwardInput { tokens: &[1, 2], batch: 1, positions: &[5, 6], attention: &bad_tree, rows: LogitRows::All };
    let err = model.forward(&input).unwrap_err().to_string();
    assert!(err.contains("parents must come before"), "{err}");
}

#[test]
fn a_prefill_with_prefix_reuse_keeps_what_the_cache_holds_and_equals_recomputation() {
    use decodebench_strategies::prefill;
    let (tokens, parents) = tree();
    for (name, mut model) in all_models() {
        model.set_prefix_reuse(true).unwrap();
        let p = prompt(11, 4);
        prefill(&mut model, &p).unwrap();
        causal(&mut model, &[40, 41]);
        // A tree verified and its path 0 → 2 → 5 accepted; then a stale tree left behind.
        tree_forward(&mut model, &tokens, &parents);
        model.compact_cache(p.len() + 2, &[0, 2, 5]).unwrap();
        tree_forward(&mut model, &tokens, &parents);
        let mut next = p.clone();
        next.extend([40, 41, tokens[0], tokens[2], tokens[5]]);
        let held = next.len();
        // The stale tree's first branch (0 → 1 → 3 → 6 → 9) is a chain: its nodes count.
        next.extend([tokens[0], tokens[1], 200, 201]);
        assert_eq!(model.reusable_prefix(&next), held + 2, "{name}");
        let (reused, _) = prefill(&mut model, &next).unwrap();
        assert_eq!(model.cache_len(), next.len(), "{name}");

        model.set_prefix_reuse(false).unwrap();
        assert_eq!(model.reusable_prefix(&next), 0, "{name}: off, nothing is kept");
        let (fresh, _) = prefill(&mut model, &next).unwrap();
        let diff = max_abs_diff(&reused.logits, &fresh.logits);
        assert!(diff <= TOL, "{name}: a prefill on a reused prefix differs from one from empty by {diff}");
        let hidden = max_abs_diff(&reused.hidden, &fresh.hidden);
        assert!(hidden <= TOL, "{name}: hidden states differ by {hidden}");
    }
}
