//! `kernels`: the project's quantized matmuls (`decodebench_kernels::qmatmul`) against candle's
//! `QMatMul` on the same weights, in GB/s (10⁹ bytes) of weights read.
//!
//! Groups `<type>/<n>x<k>/m<rows>` for the weight types the kernels cover at shapes of the
//! default models: Q4_1 (SmolLM2's projections and MLP), Q8_0 (SmolLM2's 49152-row tied head,
//! and the Qwen-0.5B's MLP shape, as its Q5_0 weights were converted at load until they had a
//! kernel of their own), Q5_0 (the Qwen-0.5B's MLP), Q4_0 and Q5_1 (at that shape: no default
//! model has them), Q5_K (at the 1.5B's MLP up shape: no default model has it), Q4_K (the Qwen-1.5B's MLP) and Q6_K (the
//! Qwen-1.5B's MLP down projection and its 151936-row head), for 1, 2, 4, 8, 16 and 64 activation
//! rows. Benchmarks per group: `candle` (candle's `QMatMul::forward`), and `ours/<path>` for every SIMD path this CPU runs
//! (`avx2`, `avx512vnni`, `avx512zmm`, and `scalar` at one row only; the selected one is what models use).
//! Q4_1, Q8_0 and Q6_K have two layouts with the same bits: `ours` is the one models take at that row
//! count, and `packed/<path>` or `ggml-layout/<path>` the other one (Q4_K, Q5_K, Q4_0, Q5_0 and Q5_1 run packed only).
//!
//! Groups `fused/<layer part>/m<rows>` time a Qwen-1.5B layer's products that share an input (Q,
//! K, V; gate, up) one by one against fused (`matmul_fused_on`), on the selected path.
//!
//! Every iteration multiplies by the next of several copies of the weight, enough copies to
//! exceed 64 MB, so the weights come from memory as in a real forward, not from cache.
//! (`DECODEBENCH_BENCH_WORKING_SET=0`: one copy, cache-resident: the kernels' compute speed.)
//! `cargo bench -p decodebench --bench kernels -- --test` runs each once; a filter such as
//! `-- Q4_1/576x1536` picks groups. Settings: 10 samples, 0.5 s warm-up, 1.5 s measurement.

use std::hint::black_box;
use std::time::Duration;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use criterion::{BenchmarkId, Criterion, Throughput};
use decodebench_kernels::packed::PackedWeight;
use decodebench_kernels::qmatmul::{available_paths, matmul_on, selected_path, SimdPath, WeightType};

/// (type, n, k): output features, input features.
const CASES: [(WeightType, usize, usize); 12] = [
    (WeightType::Q4_1, 1536, 576),
    (WeightType::Q4_1, 576, 1536),
    (WeightType::Q8_0, 49152, 576),
    (WeightType::Q8_0, 4864, 896),
    (WeightType::Q5_0, 4864, 896),
    (WeightType::Q4_0, 4864, 896),
    (WeightType::Q5_1, 4864, 896),
    (WeightType::Q4K, 8960, 1536),
    (WeightType::Q4K, 1536, 1536),
    (WeightType::Q5K, 8960, 1536),
    (WeightType::Q6K, 1536, 8960),
    (WeightType::Q6K, 151936, 1536),
];
const ROWS: [usize; 6] = [1, 2, 4, 8, 16, 64];
/// Total bytes of weight copies each benchmark rotates through (default 64 MB;
/// `DECODEBENCH_BENCH_WORKING_SET=0` uses one copy, which then stays in cache).
const WORKING_SET: usize = 64 << 20;
const WORKING_SET_ENV: &str = "DECODEBENCH_BENCH_WORKING_SET";

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .configure_from_args();
    let dev = Device::Cpu;
    let working_set = std::env::var(WORKING_SET_ENV).ok().and_then(|v| v.parse().ok()).unwrap_or(WORKING_SET);
    eprintln!("kernels: paths on this CPU {:?}, selected {:?}", available_paths(), selected_path());
    for (wt, n, k) in CASES {
        {
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let q = QTensor::quantize(&w, wt.ggml()).unwrap();
            let bytes = q.data().unwrap().len();
            let copies = working_set.div_ceil(bytes).max(1);
            let raw: Vec<Vec<u8>> = (0..copies).map(|_| q.data().unwrap().into_owned()).collect();
            // Every type runs in an interleaved layout, repacked once (as models do at load).
            let packed: Vec<PackedWeight> = raw.iter().filter_map(|r| PackedWeight::new(wt.ggml(), r, n, k).unwrap()).collect();
            let candle: Vec<QMatMul> =
                (0..copies).map(|_| QMatMul::from_qtensor(QTensor::quantize(&w, wt.ggml()).unwrap()).unwrap()).collect();
            for m in ROWS {
                let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
                let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
                let mut group = c.benchmark_group(format!("{}/{n}x{k}/m{m}", wt.name()));
                group.throughput(Throughput::BytesDecimal(bytes as u64));
                let mut i = 0usize;
                group.bench_function("candle", |b| {
                    b.iter(|| {
                        i = (i + 1) % copies;
                        black_box(candle[i].forward(&x).unwrap())
                    })
                });
                let mut out = vec![0f32; m * n];
                // `ours`: what models run (Q4_1 and Q8_0 packed; Q6_K packed from
                // Q6K_PACKED_MIN_ROWS rows, on ggml's layout below); for these three also the
                // other layout, `packed` or `ggml-layout` (same bits).
                let layouts: &[bool] = if packed.is_empty() || wt.runs_packed_only() { &[true] } else { &[true, false] };
                // The scalar fallback only at one row: it is there for correctness, not speed.
                for path in available_paths().into_iter().filter(|&p| p != SimdPath::Scalar || m == 1) {
                    for &models in layouts {
                        let use_packed = !packed.is_empty() && (packed[0].serves(m) == models);
                        let name = match (models, use_packed) {
                            (true, _) => "ours",
                            (false, true) => "packed",
                            (false, false) => "ggml-layout",
                        };
                        group.bench_function(BenchmarkId::new(name, path.name()), |b| {
                            b.iter(|| {
                                i = (i + 1) % copies;
                                if use_packed {
                                    packed[i].matmul_on(path, &xs, m, &mut out).unwrap();
                                } else {
                                    matmul_on(path, wt, &raw[i], n, k, &xs, m, &mut out).unwrap();
                                }
                                black_box(&out);
                            })
                        });
                    }
                }
                group.finish();
            }
        }
    }
    fused(&mut c, working_set);
    c.final_summary();
}

/// Groups `fused/<layer part>/m<rows>`: the products of one Qwen-1.5B layer that share an input,
/// each on its own (`separate`: one parallel region and one activation quantization each) or
/// fused (`fused`: `matmul_fused_on`, one of each), on the selected path, with the layouts models
/// take at that row count. Same bits either way (tested); the difference is the per-product
/// start and barrier of the thread pool.
fn fused(c: &mut Criterion, working_set: usize) {
    use decodebench_kernels::qmatmul::{matmul_fused_on, Operand};
    let dev = Device::Cpu;
    let parts: [(&str, &[(WeightType, usize)]); 2] = [
        ("qwen-1.5b-qkv", &[(WeightType::Q4K, 1536), (WeightType::Q4K, 256), (WeightType::Q6K, 256)]),
        ("qwen-1.5b-gate-up", &[(WeightType::Q4K, 8960), (WeightType::Q4K, 8960)]),
    ];
    let k = 1536;
    let path = selected_path();
    for (part, weights) in parts {
        let raw_one: Vec<(WeightType, usize, Vec<u8>)> = weights
            .iter()
            .map(|&(wt, n)| {
                let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
                (wt, n, QTensor::quantize(&w, wt.ggml()).unwrap().data().unwrap().into_owned())
            })
            .collect();
        let bytes: usize = raw_one.iter().map(|(_, _, r)| r.len()).sum();
        let copies = working_set.div_ceil(bytes).max(1);
        // Per copy, per weight: its rows, its ggml bytes and its packed copy.
        let sets: Vec<Vec<(usize, Vec<u8>, PackedWeight)>> = (0..copies)
            .map(|_| {
                raw_one
                    .iter()
                    .map(|(wt, n, r)| (*n, r.clone(), PackedWeight::new(wt.ggml(), r, *n, k).unwrap().expect("a packed type")))
                    .collect()
            })
            .collect();
        for m in [1usize, 8] {
            let xs: Vec<f32> = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let ops: Vec<Vec<Operand>> = sets
                .iter()
                .map(|set| {
                    set.iter().map(|(n, r, p)| if p.serves(m) { Operand::Packed(p) } else { Operand::Q6kGgml { data: r, n: *n } }).collect()
                })
                .collect();
            let mut group = c.benchmark_group(format!("fused/{part}/m{m}"));
            group.throughput(Throughput::BytesDecimal(bytes as u64));
            let mut i = 0usize;
            group.bench_function(BenchmarkId::new("separate", path.name()), |b| {
                b.iter(|| {
                    i = (i + 1) % copies;
                    for op in &ops[i] {
                        black_box(matmul_fused_on(path, std::slice::from_ref(op), &xs, m).unwrap());
                    }
                })
            });
            group.bench_function(BenchmarkId::new("fused", path.name()), |b| {
                b.iter(|| {
                    i = (i + 1) % copies;
                    black_box(matmul_fused_on(path, &ops[i], &xs, m).unwrap())
                })
            });
            group.finish();
        }
    }
}
