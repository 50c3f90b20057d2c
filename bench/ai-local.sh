#!/usr/bin/env bash
# The local model (issue 16): prompt tokens/s, generation tokens/s and time to first token of
# Nimbus's engine (candle, `crates/nimbus-llm/examples/bench.rs`) against llama.cpp
# (PyPI `llama-cpp-python`, built here) on the same GGUF, the same prompt token ids, greedy, both
# on the machine's cores (llama.cpp with n_threads = nproc), ROUNDS rounds alternating.
# Then Nimbus alone with STREAMS (default 4) answers generated at once (batched through the model):
# their summed generation tokens/s, prompts included. It also compares the two as a differential
# test: our tokenizer's ids for the rendered chat template against llama.cpp's tokenizer, and the
# greedy answers' common prefix.
source "$(dirname "$0")/common.sh"
ROUNDS=${ROUNDS:-3}
MAX_TOKENS=${MAX_TOKENS:-128}
"$ROOT/scripts/models.sh"
MODEL="${NIMBUS_MODELS:-$HOME/.cache/nimbus/models}/SmolLM2-135M-Instruct.Q4_1.gguf"
VENV="$ROOT/target/bench-venv"
if ! "$VENV/bin/python" -c 'import llama_cpp' >/dev/null 2>&1; then
  need_packages cmake build-essential python3-venv
  python3 -m venv "$VENV"
  echo "ai-local.sh: building llama-cpp-python (compiles llama.cpp: minutes)" >&2
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$VENV/bin/pip" install --quiet 'llama-cpp-python>=0.3,<0.4'
fi
(cd "$ROOT" && cargo build --quiet --release -p nimbus-llm --example bench)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# About 200 prompt tokens, answered at length.
cat >"$TMP/prompt.txt" <<'TXT'
Here are some notes about dragons from old stories. Dragons are large, winged reptiles that breathe fire.
In European tales they guard hoards of gold in caves under mountains, and knights ride out to fight them.
In Chinese stories they are wise and bring rain, rule over rivers and seas, and are symbols of power and luck.
Some dragons can speak and keep ancient secrets; others are beasts. They live for thousands of years, sleep for
centuries, and wake when their treasure is disturbed. A dragon's scales are harder than steel, and its blood is
said to give strength to whoever bathes in it.
Using these notes, write a long story about a young dragon who leaves its mountain for the first time.
TXT
for round in $(seq 1 "$ROUNDS"); do
  "$ROOT/target/release/examples/bench" "$MODEL" "$TMP/prompt.txt" "$MAX_TOKENS" 1 >>"$TMP/nimbus.jsonl"
  "$VENV/bin/python" - "$MODEL" "$TMP/nimbus.jsonl" "$MAX_TOKENS" >>"$TMP/llama.jsonl" <<'PY'
import json, os, sys, time
import llama_cpp
model, ours, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
last = json.loads(open(ours).read().splitlines()[-1])
ids = last["prompt_ids"]
llm = llama_cpp.Llama(model_path=model, n_ctx=2048, n_threads=os.cpu_count(), n_batch=512, verbose=False)
text = llm.detokenize(ids, special=True).decode()
theirs = llm.tokenize(text.encode(), add_bos=False, special=True)
started = time.perf_counter()
first = None
out = []
for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
    if first is None:
        first = time.perf_counter()
    if token in (0, 2):
        break
    out.append(token)
    if len(out) >= max_tokens:
        break
end = time.perf_counter()
answer = llm.detokenize(out).decode(errors="replace")
same = 0
for a, b in zip(answer, last["text"]):
    if a != b:
        break
    same += 1
print(json.dumps({
    "prompt_tokens": len(ids), "completion_tokens": len(out),
    "prompt_tps": len(ids) / (first - started), "generation_tps": (len(out) - 1) / (end - first),
    "ttft_ms": (first - started) * 1000, "tokenizer_matches": theirs == ids,
    "common_prefix_chars": same, "answer_chars": len(answer),
}))
PY
done
python3 - "$TMP/nimbus.jsonl" "$TMP/llama.jsonl" <<'PY'
import json, statistics, sys
ours = [json.loads(l) for l in open(sys.argv[1])]
theirs = [json.loads(l) for l in open(sys.argv[2])]
med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
print("prompt %d tokens, %d generated (llama.cpp %d); medians of %d rounds" % (
    ours[0]["prompt_tokens"], ours[0]["completion_tokens"], theirs[0]["completion_tokens"], len(ours)))
print("%-22s %12s %12s %8s" % ("", "nimbus", "llama.cpp", "ratio"))
for key, label in (("prompt_tps", "prompt tokens/s"), ("generation_tps", "generation tokens/s")):
    a, b = med(ours, key), med(theirs, key)
    print("%-22s %12.1f %12.1f %7.2fx" % (label, a, b, a / b))
a, b = med(ours, "ttft_ms"), med(theirs, "ttft_ms")
print("%-22s %12.1f %12.1f %7.2fx" % ("time to first token ms", a, b, a / b))
print("tokenizer ids equal to llama.cpp's: %s" % all(t["tokenizer_matches"] for t in theirs))
print("greedy answers agree for the first %d of %d characters" % (theirs[-1]["common_prefix_chars"], theirs[-1]["answer_chars"]))
PY
STREAMS=${STREAMS:-4}
"$ROOT/target/release/examples/bench" "$MODEL" "$TMP/prompt.txt" "$MAX_TOKENS" 1 "$STREAMS" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
print("nimbus, %d answers at once: %.1f tokens/s in all (prompts included)" % (r["streams"], r["tokens_per_second"]))'
