//! The real models (installed by `scripts/models.sh`; the test command runs it first): the
//! tokenizer against known ids, a short answer, concurrency and the queue's bound, embeddings.

use std::path::PathBuf;
use std::sync::OnceLock;

use nimbus_llm::{ChatModel, ChatOptions, EmbeddingModel, Error, Finish, Message, Sampling, Step};

fn models() -> PathBuf {
    let dir = std::env::var_os("NIMBUS_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/nimbus/models"));
    assert!(
        dir.join("SmolLM2-135M-Instruct.Q4_1.gguf").exists(),
        "no models in {}: run scripts/models.sh",
        dir.display()
    );
    dir
}

fn load(options: ChatOptions) -> ChatModel {
    ChatModel::load(&models().join("SmolLM2-135M-Instruct.Q4_1.gguf"), options).expect("the chat model loads")
}

/// One model the tests share (they may run as threads of one process).
fn chat() -> &'static ChatModel {
    static MODEL: OnceLock<ChatModel> = OnceLock::new();
    MODEL.get_or_init(|| load(ChatOptions { max_active: 2, queue: 64 }))
}

fn greedy(max_tokens: usize) -> Sampling {
    Sampling {
        temperature: 0.0,
        top_p: None,
        seed: 1,
        max_tokens,
        stop: vec![],
        frequency_penalty: 0.0,
        presence_penalty: 0.0,
    }
}

fn user(text: &str) -> Vec<Message> {
    vec![Message { role: "user".into(), content: text.into() }]
}

/// The answer's text and its `Done` step.
async fn answer(mut steps: tokio::sync::mpsc::UnboundedReceiver<Step>) -> (String, Step) {
    let mut text = String::new();
    while let Some(step) = steps.recv().await {
        match step {
            Step::Text(t) => text.push_str(&t),
            done => return (text, done),
        }
    }
    panic!("the generation ended without a Done step; text so far: {text:?}");
}

#[test]
fn the_tokenizer_matches_the_models_own_ids() {
    let model = chat();
    // Digits one by one, no space added in front (the traps of a generic GPT-2 tokenizer).
    assert_eq!(model.tokenize("Hello world 123").unwrap(), [19556, 905, 216, 33, 34, 35]);
    // Control tokens written in text are single tokens.
    let ids = model.tokenize("<|im_start|>user\nHi<|im_end|>").unwrap();
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
    // The chat template: the default system prompt, the user's turn, the assistant's opened.
    let prompt = model.prompt(&user("Hi")).unwrap();
    let expected = model
        .tokenize(
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        )
        .unwrap();
    assert_eq!(prompt, expected);
}

#[tokio::test]
async fn it_answers_a_short_question_coherently() {
    let model = chat();
    let mut messages = user("What is the capital of France?");
    messages.insert(0, Message { role: "system".into(), content: "You are a helpful assistant.".into() });
    let prompt = model.prompt(&messages).unwrap();
    let (text, done) = answer(model.generate(prompt.clone(), greedy(40)).unwrap()).await;
    assert!(text.contains("Paris"), "answer: {text:?}");
    let Step::Done { finish, prompt_tokens, completion_tokens, .. } = done else { panic!("{done:?}") };
    assert_eq!(finish, Finish::Stop, "answer: {text:?}");
    assert_eq!(prompt_tokens, prompt.len());
    assert!(completion_tokens > 3 && completion_tokens < 40, "{completion_tokens}");
    // The same prompt gives the same greedy answer (each sequence's cache is its own).
    let (again, _) = answer(model.generate(prompt, greedy(40)).unwrap()).await;
    assert_eq!(again, text);
}

#[tokio::test]
async fn max_tokens_and_stop_strings_end_an_answer() {
    let model = chat();
    let prompt = model.prompt(&user("Count from 1 to 20, separated by commas.")).unwrap();
    let (text, done) = answer(model.generate(prompt.clone(), greedy(5)).unwrap()).await;
    assert!(matches!(done, Step::Done { finish: Finish::Length, completion_tokens: 5, .. }), "{done:?} {text:?}");
    let (full, _) = answer(model.generate(prompt.clone(), greedy(80)).unwrap()).await;
    let cut = full.find('5').expect("the count has a 5");
    let stopped = Sampling { stop: vec!["5".into()], ..greedy(80) };
    let (text, done) = answer(model.generate(prompt, stopped).unwrap()).await;
    assert_eq!(text, full[..cut]);
    assert!(matches!(done, Step::Done { finish: Finish::Stop, .. }), "{done:?}");
}

#[tokio::test]
async fn concurrent_requests_share_the_model_and_the_queue_is_bounded() {
    let model = &load(ChatOptions { max_active: 2, queue: 2 });
    let prompt = model.prompt(&user("Write a long story about a dragon.")).unwrap();
    // Two generate together and two wait; past them a request is refused at once. (How many the
    // thread has taken from the queue when the refusal comes depends on timing: 2 to 4 accepted.)
    let mut running = Vec::new();
    let mut refused = None;
    for _ in 0..6 {
        match model.generate(prompt.clone(), greedy(30)) {
            Ok(steps) => running.push(steps),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert!((2..=4).contains(&running.len()), "{}", running.len());
    assert!(matches!(refused, Some(Error::Busy(2))), "{refused:?}");
    let mut texts = Vec::new();
    for steps in running {
        texts.push(answer(steps).await.0);
    }
    assert!(texts.iter().all(|t| t == &texts[0] && !t.is_empty()), "{texts:?}");
}

#[tokio::test]
async fn a_dropped_receiver_stops_its_generation() {
    let model = chat();
    let prompt = model.prompt(&user("Write a long story about a dragon.")).unwrap();
    drop(model.generate(prompt.clone(), greedy(2000)).unwrap());
    // The slot is free again soon: a short answer completes without waiting for 2,000 tokens.
    let started = std::time::Instant::now();
    let (_, done) = answer(model.generate(prompt, greedy(3)).unwrap()).await;
    assert!(matches!(done, Step::Done { completion_tokens: 3, .. }), "{done:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

#[test]
fn a_prompt_beyond_the_context_is_refused() {
    let model = chat();
    let long = vec![33; model.context_length()];
    assert!(matches!(model.generate(long, greedy(1)), Err(Error::ContextLength { .. })));
}

#[test]
fn embeddings_are_unit_vectors_that_rank_by_meaning() {
    let model = EmbeddingModel::load(&models().join("all-MiniLM-L6-v2")).expect("the embedding model loads");
    assert_eq!(model.dimensions(), 384);
    let texts: Vec<String> =
        ["A cat sits on the mat.", "A kitten is resting on a rug.", "Stock markets fell sharply today."]
            .map(String::from)
            .to_vec();
    let (vectors, tokens) = model.embed(&texts).unwrap();
    assert_eq!(vectors.len(), 3);
    assert!(tokens > 10);
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    for v in &vectors {
        assert!((dot(v, v) - 1.0).abs() < 1e-4);
    }
    let (near, far) = (dot(&vectors[0], &vectors[1]), dot(&vectors[0], &vectors[2]));
    assert!(near > 0.5 && far < 0.2 && near > far + 0.3, "near {near}, far {far}");
    // One text alone embeds as it does in a batch (padding does not change it).
    let (alone, _) = model.embed(&texts[..1]).unwrap();
    assert!(dot(&alone[0], &vectors[0]) > 0.9999);
}
