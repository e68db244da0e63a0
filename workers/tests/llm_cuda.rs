//! The CUDA runner against the CPU runner on the real model (SmolLM2-135M-Instruct, Q4_1).
//!
//! `cuda_runner_matches_the_cpu_runner_and_reports_decode_speed` is a GPU-only check:
//! on a machine where [`discover`] finds no GPU it prints "no CUDA device: skipped" and
//! returns, which is the only test here allowed to pass without checking anything (a
//! machine without a GPU cannot run it; CI machines have none). With a GPU it loads the
//! model, runs chunked prefills and batched decode steps of a few chat prompts through
//! both runners with teacher forcing, requires top-1 agreement on at least 95% of the
//! positions, and prints the max |log-probability difference| and the decode tokens/s at
//! batch 1 and 16.
//!
//! The comparison harness itself is checked everywhere, CPU runner against CPU runner
//! (which must agree exactly), and so is the exact f32 reference the GPU is also
//! measured against (against the CPU runner on a tiny random model). Needs the model: `scripts/fetch-model` (or
//! `SWELL_MODEL_PATH`); missing, the tests fail and say so.

use std::sync::Arc;

use swell_workers::llm::cuda::check::{
    compare, cpu_runner, run_check, tiny_random_weights, ExactRunner, CHECK_PROMPTS,
};
use swell_workers::llm::cuda::{discover, CudaRunner};
use swell_workers::llm::model::{Logits, ModelRunner, SeqChunk};
use swell_workers::llm::{find_default_model, LlmConfig, LlmEngineFactory};
use swell_workers::{ChatMessage, EngineFactory};

fn model_path() -> std::path::PathBuf {
    find_default_model().unwrap_or_else(|| {
        panic!("the model is missing: run scripts/fetch-model (or set SWELL_MODEL_PATH)")
    })
}

#[test]
fn cuda_runner_matches_the_cpu_runner_and_reports_decode_speed() {
    let gpus = discover().unwrap_or_else(|e| panic!("GPU discovery failed: {e}"));
    if gpus.is_empty() {
        println!("no CUDA device: skipped");
        return;
    }
    let report = run_check(&model_path(), gpus[0].ordinal)
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("a GPU was discovered");
    println!("{report}");
    for (what, got) in [("the CPU runner", &report.comparison), ("the exact f32 reference", &report.gpu_vs_exact)] {
        assert!(got.top1_agreement() >= 0.95, "against {what}: top-1 agreement under 95%: {got}");
    }
}

/// GPU-only too (skipped without a GPU, like the test above): the runner on a tiny
/// random model, tied and untied LM head, against the CPU runner, and the same errors
/// for bad chunks. Quick enough for `scripts/check-cuda-kernels`, which runs it on CPU
/// stand-ins for libcuda and libcublas (the kernels emulated thread by thread).
#[test]
fn cuda_runner_matches_the_cpu_runner_on_a_tiny_random_model() {
    let gpus = discover().unwrap_or_else(|e| panic!("GPU discovery failed: {e}"));
    if gpus.is_empty() {
        println!("no CUDA device: skipped");
        return;
    }
    let prompts: Vec<Vec<u32>> = [21usize, 9, 40]
        .iter()
        .enumerate()
        .map(|(s, &len)| (0..len).map(|i| ((i * 31 + s * 17 + 5) % 96) as u32).collect())
        .collect();
    for tied in [true, false] {
        let weights = Arc::new(tiny_random_weights(tied, 7));
        let mut cpu = cpu_runner(Arc::clone(&weights), 32, 2).unwrap();
        let mut gpu = CudaRunner::new(&weights, gpus[0].ordinal, 32).unwrap_or_else(|e| panic!("{e}"));
        println!("{}", gpu.device());
        let got = compare(&mut cpu, &mut gpu, &prompts, 6).unwrap_or_else(|e| panic!("{e}"));
        println!("tiny model (tied lm head: {tied}), cuda against cpu: {got}");
        assert_eq!(got.rows, 21 + 9 + 40 + 3 * 6);
        assert!(got.top1_agreement() >= 0.95, "{got}");
        // f16 weights and activations against the CPU's 8-bit activations: on this model
        // the differences at position 0 (no attention to get wrong) are of the same size
        // as everywhere else, about 0.01 at the top token and up to 0.1.
        assert!(got.mean_top1_logprob_diff < 0.02 && got.max_top1_logprob_diff < 0.25, "{got}");
        // Against plain f32 the f16 runner is much closer.
        let mut exact = ExactRunner::new(Arc::clone(&weights), 32);
        let got = compare(&mut exact, &mut gpu, &prompts, 6).unwrap_or_else(|e| panic!("{e}"));
        println!("tiny model (tied lm head: {tied}), cuda against exact f32: {got}");
        assert!(got.top1_agreement() >= 0.95, "{got}");
        assert!(got.mean_top1_logprob_diff < 0.005 && got.max_top1_logprob_diff < 0.05, "{got}");

        let blocks = [0u32, 1];
        for bad in [
            SeqChunk { tokens: &[96], start: 0, blocks: &blocks, logits: Logits::Last },
            SeqChunk { tokens: &[1], start: 32, blocks: &blocks, logits: Logits::Last },
            SeqChunk { tokens: &[1], start: 256, blocks: &blocks, logits: Logits::Last },
        ] {
            let want = cpu.forward(&[bad]).unwrap_err().to_string();
            assert_eq!(gpu.forward(&[bad]).unwrap_err().to_string(), want);
        }
        assert!(gpu.forward(&[]).unwrap().is_empty());
    }
}

/// The exact f32 reference (what the GPU is also measured against) agrees with the CPU
/// runner on a tiny random model, and refuses bad chunks with the CPU runner's errors.
#[test]
fn exact_reference_agrees_with_the_cpu_runner_on_a_tiny_random_model() {
    let prompts: Vec<Vec<u32>> = vec![(0..30).map(|i| (i * 7 % 96) as u32).collect(), vec![3, 1, 4, 1, 5]];
    let weights = Arc::new(tiny_random_weights(false, 3));
    let mut cpu = cpu_runner(Arc::clone(&weights), 16, 2).unwrap();
    let mut exact = ExactRunner::new(weights, 16);
    let got = compare(&mut exact, &mut cpu, &prompts, 4).expect("compare");
    println!("tiny model, cpu against exact f32: {got}");
    assert_eq!(got.rows, 35 + 2 * 4);
    assert!(got.top1_agreement() >= 0.95 && got.mean_top1_logprob_diff < 0.02, "{got}");
    let blocks = [0u32];
    let bad = [SeqChunk { tokens: &[96], start: 0, blocks: &blocks, logits: Logits::Last }];
    assert_eq!(exact.forward(&bad).unwrap_err().to_string(), cpu.forward(&bad).unwrap_err().to_string());
}

/// The harness on two CPU runners over the same weights: every row identical.
#[test]
fn comparison_of_the_cpu_runner_with_itself_is_exact() {
    let factory = LlmEngineFactory::new(LlmConfig::new(model_path())).expect("load the model");
    let (weights, _) = factory.weights().expect("weights");
    let tokenizer = factory.tokenizer();
    let prompts: Vec<Vec<u32>> = CHECK_PROMPTS[..2]
        .iter()
        .map(|p| {
            let text = tokenizer
                .apply_chat_template(&[ChatMessage { role: "user".into(), content: (*p).into() }], true)
                .unwrap();
            tokenizer.encode(&text, true).unwrap()
        })
        .collect();
    let mut a = cpu_runner(Arc::clone(&weights), 64, 2).unwrap();
    let mut b = cpu_runner(weights, 64, 2).unwrap();
    let got = compare(&mut a, &mut b, &prompts, 3).expect("compare");
    let positions: usize = prompts.iter().map(Vec::len).sum::<usize>() + 2 * 3;
    assert_eq!(got.sequences, 2);
    assert_eq!(got.rows, positions, "every prefill position and every decode step");
    assert_eq!(got.top1_agree, got.rows, "{got}");
    assert_eq!(got.max_logprob_diff, 0.0, "{got}");
}
