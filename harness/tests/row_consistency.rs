//! Bit-exactness between verifying a token inside a block and decoding it alone: the property
//! that lets lossless strategies reproduce greedy decoding token for token. Tolerances would
//! hide exactly the flips these tests exist to catch, so every comparison here is `==`.

mod common;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Tensor};
use decodebench::models::gguf::GgufFile;
use decodebench::models::safetensors;
use decodebench::models::transformer::Linear;
use decodebench::models::Transformer;
use decodebench::testing::{write_gguf, write_hf_dir, TinySpec};
use decodebench_strategies::{BlockAttention, DecoderModel, ForwardInput, LogitRows};

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
}

/// Every weight type of the default models and the tiny ones, at shapes like Qwen's (n and k
/// multiples of 256, so candle's repacked kernels are eligible), for row counts up to a 64-node
/// tree: the exact path gives each row its single-row bits, and the types the model batches
/// (`rows_are_independent`) really are row-independent on this machine.
#[test]
fn linear_rows_match_single_row_matmuls() {
    let dev = Device::Cpu;
    let (n, k) = (512usize, 768usize);
    let dtypes = [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
        GgmlDType::F32,
    ];
    for dtype in dtypes {
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
        let weight = QMatMul::from_qtensor(QTensor::quantize(&w, dtype).unwrap()).unwrap();
        let linear = Linear::new(weight, None).unwrap();
        for m in [2usize, 3, 4, 5, 8, 16, 33, 64] {
            let x = Tensor::randn(0f32, 1.0, (1, m, k), &dev).unwrap();
            let exact = linear.forward(&x, true).unwrap();
            let batched = linear.forward(&x, false).unwrap();
            for r in 0..m {
                let alone = bits(&linear.forward(&x.narrow(1, r, 1).unwrap(), true).unwrap());
                assert_eq!(bits(&exact.narrow(1, r, 1).unwrap()), alone, "{dtype:?}: exact row {r} of {m}");
                if linear.rows_are_independent() {
                    assert_eq!(bits(&batched.narrow(1, r, 1).unwrap()), alone, "{dtype:?}: batched row {r} of {m}");
                }
            }
        }
    }
}

/// Decodes a chain one token at a time, then verifies the same chain as part of a tree with side
/// branches (and as a causal block): the logits of every chain token must be bit-identical.
fn check_tree_rows_equal_decode(name: &str, model: &mut Transformer, prompt_len: usize) {
    let vocab = model.info().vocab_size as u32;
    let prompt: Vec<u32> = (0..prompt_len as u32).map(|i| (i * 31 + 7) % vocab.min(250)).collect();
    let positions: Vec<usize> = (0..prompt_len).collect();
    model.clear_cache();
    model.forward(&ForwardInput::causal(&prompt, &positions, LogitRows::Last)).unwrap();
    let chain = [3u32, 99, 42, 7, 200];
    let alone: Vec<Vec<u32>> = chain
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let out = model.forward(&ForwardInput::causal(&[t], &[prompt_len + i], LogitRows::Last)).unwrap();
            bits(&out.logits)
        })
        .collect();

    // The chain is nodes 0, 1, 3, 4, 6; nodes 2 and 5 are side branches.
    model.truncate_cache(prompt_len).unwrap();
    let tokens = [3u32, 99, 11, 42, 7, 13, 200];
    let attention = BlockAttention::Tree { parents: vec![None, Some(0), Some(0), Some(1), Some(3), Some(1), Some(4)] };
    let positions: Vec<usize> = attention.depths(tokens.len()).iter().map(|d| prompt_len + d).collect();
    let input = ForwardInput { tokens: &tokens, batch: 1, positions: &positions, attention: &attention, rows: LogitRows::All };
    let tree = model.forward(&input).unwrap().logits.squeeze(0).unwrap();
    for (i, node) in [0usize, 1, 3, 4, 6].into_iter().enumerate() {
        assert_eq!(bits(&tree.get(node).unwrap()), alone[i], "{name}: tree node {node} vs decode step {i}");
    }

    model.truncate_cache(prompt_len).unwrap();
    let positions: Vec<usize> = (prompt_len..prompt_len + chain.len()).collect();
    let block = model.forward(&ForwardInput::causal(&chain, &positions, LogitRows::All)).unwrap().logits.squeeze(0).unwrap();
    for (i, expected) in alone.iter().enumerate() {
        assert_eq!(&bits(&block.get(i).unwrap()), expected, "{name}: causal block row {i} vs decode step {i}");
    }
}

#[test]
fn tiny_models_verify_rows_exactly_as_decoded() {
    let dir = tempfile::tempdir().unwrap();
    for spec in [TinySpec::llama(), TinySpec::qwen2(), TinySpec::qwen2_k_quants()] {
        let path = dir.path().join(format!("{}-{:?}.gguf", spec.arch, spec.weight_type));
        write_gguf(&spec, &path).unwrap();
        let mut model = GgufFile::open(&path).unwrap().load_transformer("tiny".into(), &Device::Cpu).unwrap();
        for prompt_len in [5, 64, 130] {
            check_tree_rows_equal_decode(&format!("gguf {} {:?} prompt {prompt_len}", spec.arch, spec.weight_type), &mut model, prompt_len);
        }
    }
    for spec in [TinySpec::llama(), TinySpec::qwen2()] {
        let path = dir.path().join(format!("{}-hf", spec.arch));
        write_hf_dir(&spec, &path).unwrap();
        let mut model = safetensors::load_transformer(&path, "tiny".into(), None, &Device::Cpu).unwrap();
        check_tree_rows_equal_decode(&format!("safetensors {} f32", spec.arch), &mut model, 40);
    }
}

#[test]
fn smollm2_verifies_rows_exactly_as_decoded() {
    let path = common::smollm2_gguf();
    let mut model = GgufFile::open(&path).unwrap().load_transformer("smollm2".into(), &Device::Cpu).unwrap();
    check_tree_rows_equal_decode("smollm2", &mut model, 77);
}

#[test]
fn qwen_verifies_rows_exactly_as_decoded() {
    let Some(path) = common::qwen05_gguf() else {
        eprintln!("skipped: qwen2.5-coder-0.5b is not installed");
        return;
    };
    let mut model = GgufFile::open(&path).unwrap().load_transformer("qwen".into(), &Device::Cpu).unwrap();
    check_tree_rows_equal_decode("qwen2.5-coder-0.5b", &mut model, 77);
}
