//! The local chat model's speed, for `bench/ai-local.sh`: prompt tokens/s, generation tokens/s
//! and time to first token for one prompt, greedy, a number of rounds; prints one JSON line per
//! round, with the generated token ids so the bench can compare them with llama.cpp's.
//!
//! `cargo run --release -p nimbus-llm --example bench -- <model.gguf> <prompt file> <max tokens> <rounds>`

use std::time::Instant;

use nimbus_llm::{ChatModel, ChatOptions, Message, Sampling, Step};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, prompt, max_tokens, rounds] = &args[..] else {
        eprintln!("usage: bench <model.gguf> <prompt file> <max tokens> <rounds>");
        std::process::exit(2);
    };
    let model = ChatModel::load(model.as_ref(), ChatOptions { max_active: 1, queue: 1 }).expect("the model loads");
    let text = std::fs::read_to_string(prompt).expect("the prompt file");
    let prompt = model.prompt(&[Message { role: "user".into(), content: text }]).expect("the prompt renders");
    let max_tokens: usize = max_tokens.parse().expect("max tokens");
    for _ in 0..rounds.parse::<usize>().expect("rounds") {
        let sampling = Sampling {
            temperature: 0.0,
            top_p: None,
            seed: 0,
            max_tokens,
            stop: vec![],
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
        };
        let started = Instant::now();
        let mut steps = model.generate(prompt.clone(), sampling).expect("queued");
        let mut first = None;
        let mut text = String::new();
        while let Some(step) = steps.recv().await {
            match step {
                Step::Text(t) => {
                    first.get_or_insert_with(|| started.elapsed());
                    text.push_str(&t);
                }
                Step::Done { prompt_tokens, completion_tokens, prompt_time, generation_time, .. } => {
                    let line = serde_json::json!({
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "prompt_tps": prompt_tokens as f64 / prompt_time.as_secs_f64(),
                        // The first generated token comes with the prompt's pass: the rest are generation.
                        "generation_tps": completion_tokens.saturating_sub(1) as f64 / generation_time.as_secs_f64(),
                        "ttft_ms": first.unwrap_or_default().as_secs_f64() * 1000.0,
                        "prompt_ids": prompt,
                        "text": text,
                    });
                    println!("{line}");
                    break;
                }
                Step::Failed(e) => panic!("{e}"),
            }
        }
    }
}
