use std::sync::Arc;
use std::time::Instant;
use swell_workers::llm::gguf::GgufFile;
use swell_workers::llm::model::{LlamaModel, LlamaWeights, Logits, SeqChunk};
use swell_workers::llm::quant::Kernel;

fn main() {
    let path = std::env::args().nth(1).unwrap_or("/work/models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let t0 = Instant::now();
    let file = GgufFile::open(path.as_ref()).unwrap();
    let t1 = Instant::now();
    let weights = Arc::new(LlamaWeights::load(&file, Kernel::detect()).unwrap());
    let t2 = Instant::now();
    println!("open {:?} load {:?} {:?} kernel {:?} weights {} MB", t1 - t0, t2 - t1, weights.config, weights.kernel, weights.size_bytes() >> 20);
    let tokens: Vec<String> = file.metadata()["tokenizer.ggml.tokens"].to_vec().unwrap().iter().map(|v| v.to_string().unwrap().clone()).collect();
    let mut model = LlamaModel::new(weights.clone(), 256).expect("KV cache");
    let blocks: Vec<u32> = (0..64).collect();
    let mut ids: Vec<u32> = vec![19556, 905, 216, 33, 34, 35];
    let prompt_len = ids.len();
    let mut start = 0;
    let t = Instant::now();
    for step in 0..40 {
        let chunk = SeqChunk { tokens: &ids[start..], start, blocks: &blocks, logits: Logits::Last };
        let logits = model.forward(&[chunk]).unwrap().to_vec();
        start = ids.len();
        let (best, _) = logits.iter().enumerate().fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a });
        if step == 0 {
            let mut idx: Vec<usize> = (0..logits.len()).collect();
            idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            for &i in &idx[..5] { println!("  {} {:?} {}", i, tokens[i], logits[i]); }
        }
        ids.push(best as u32);
    }
    let el = t.elapsed();
    println!("{:?}", &ids[prompt_len..]);
    println!("{}", ids[prompt_len..].iter().map(|&i| tokens[i as usize].replace('Ġ', " ").replace('Ċ', "\n")).collect::<String>());
    println!("40 tokens in {:?} = {:.1} tok/s", el, 40.0 / el.as_secs_f64());
}
