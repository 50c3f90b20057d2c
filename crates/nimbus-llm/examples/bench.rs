//! The local chat model's speed, for `bench/ai-local.sh`: prompt tokens/s, generation tokens/s
//! and time to first token for one prompt, greedy, a number of rounds; prints one JSON line per
//! round, with the generated token ids so the bench can compare them with llama.cpp's.
//!
//! `cargo run --release -p nimbus-llm --example bench -- <model.gguf> <prompt file> <max tokens> <rounds> [streams]`
//!
//! With `streams` > 1, each round runs that many generations at once (sequences batched through
//! the model) and prints their summed generation tokens/s instead.

use std::time::Instant;

use nimbus_llm::{ChatModel, ChatOptions, Message, Sampling, Step};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (model, prompt, max_tokens, rounds, streams) = match &args[1..] {
        [model, prompt, max_tokens, rounds] => (model, prompt, max_tokens, rounds, 1),
        [model, prompt, max_tokens, rounds, streams] => {
            (model, prompt, max_tokens, rounds, streams.parse().expect("streams"))
        }
        _ => {
            eprintln!("usage: bench <model.gguf> <prompt file> <max tokens> <rounds> [streams]");
            std::process::exit(2);
        }
    };
    let options = ChatOptions { max_active: streams, queue: streams };
    let model = ChatModel::load(model.as_ref(), options).expect("the model loads");
    let text = std::fs::read_to_string(prompt).expect("the prompt file");
    let prompt = model.prompt(&[Message { role: "user".into(), content: text }]).expect("the prompt renders");
    let max_tokens: usize = max_tokens.parse().expect("max tokens");
    for _ in 0..rounds.parse::<usize>().expect("rounds") {
        if streams > 1 {
            concurrent(&model, &prompt, max_tokens, streams).await;
            continue;
        }
        let sampling = greedy(max_tokens);
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

fn greedy(max_tokens: usize) -> Sampling {
    Sampling {
        temperature: 0.0,
        top_p: None,
        seed: 0,
        max_tokens,
        stop: vec![],
        frequency_penalty: 0.0,
        presence_penalty: 0.0,
    }
}

/// `streams` generations at once: the generated tokens of all of them per second of the round.
async fn concurrent(model: &ChatModel, prompt: &[u32], max_tokens: usize, streams: usize) {
    let started = Instant::now();
    let receivers: Vec<_> =
        (0..streams).map(|_| model.generate(prompt.to_vec(), greedy(max_tokens)).expect("queued")).collect();
    let mut tokens = 0;
    for mut steps in receivers {
        while let Some(step) = steps.recv().await {
            if let Step::Done { completion_tokens, .. } = step {
                tokens += completion_tokens;
                break;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"streams": streams, "tokens": tokens, "tokens_per_second": tokens as f64 / seconds})
    );
}
