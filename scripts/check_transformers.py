"""Loads a checkpoint that `collapse-lab export` wrote with the real transformers library and compares it
with collapse-lab's own numbers from `collapse-lab eval --dump`: the logits of the dumped windows, and
perplexity over the whole evaluated stream with collapse-lab's windowing (consecutive block_size windows,
the last one shorter). Exits non-zero if loading warns of missing or unexpected weights, if a logit differs
by 1e-4 or more, or if the perplexities differ by more than 1e-4 relative.

    python scripts/check_transformers.py HF_DIR DUMP.json
"""
import json
import math
import sys

import torch
import transformers
from transformers import AutoTokenizer, GPT2LMHeadModel


def main(hf_dir, dump_path):
    torch.set_default_dtype(torch.float32)
    model, info = GPT2LMHeadModel.from_pretrained(hf_dir, output_loading_info=True)
    model.eval()
    problems = {k: v for k, v in info.items() if v}
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    print(f"loading info: {info}")
    tok = AutoTokenizer.from_pretrained(hf_dir)
    dump = json.load(open(dump_path))
    t = dump["block_size"]
    stream = dump["stream"]
    # The exported tokenizer encodes the first evaluated document to the tokens collapse-lab evaluated.
    first = stream[:stream.index(tok.eos_token_id)]
    same = tok.encode(tok.decode(first)) == first
    print(f"tokenizer: {type(tok).__name__}, vocab {len(tok)}, eos {tok.eos_token!r} = {tok.eos_token_id}; "
          f"first document ({len(first)} tokens) re-encoded identically: {same}")

    worst = 0.0
    with torch.no_grad():
        for w, want in enumerate(dump["window_logits"]):
            ids = torch.tensor([stream[w * t:(w + 1) * t]])
            got = model(ids).logits[0]
            diff = (got - torch.tensor(want)).abs().max().item()
            worst = max(worst, diff)
    n_logits = sum(len(w) for w in dump["window_logits"])
    print(f"logits: {len(dump['window_logits'])} windows, {n_logits} positions x {model.config.vocab_size}: "
          f"max abs difference {worst:.3e}")

    nll, count = 0.0, 0
    predicted = len(stream) - 1
    with torch.no_grad():
        starts = list(range(0, predicted, t))
        for s in starts:
            n = min(t, predicted - s)
            x = torch.tensor([stream[s:s + n]])
            y = torch.tensor(stream[s + 1:s + n + 1])
            logp = torch.log_softmax(model(x).logits[0].double(), dim=-1)
            nll -= logp[torch.arange(n), y].sum().item()
            count += n
    ppl_hf = math.exp(nll / count)
    ppl_cl = dump["summary"]["perplexity"]
    rel = abs(ppl_hf - ppl_cl) / ppl_cl
    print(f"perplexity over {count} tokens: collapse-lab {ppl_cl:.6f}, transformers {ppl_hf:.6f} "
          f"(relative difference {rel:.2e})")

    failed = []
    if not same:
        failed.append("the exported tokenizer encodes the first document differently")
    if problems:
        failed.append(f"loading reported {problems}")
    if worst >= 1e-4:
        failed.append(f"logits differ by {worst:.3e}")
    if rel > 1e-4:
        failed.append(f"perplexities differ by {rel:.2e} relative")
    if failed:
        print("FAILED: " + "; ".join(failed))
        sys.exit(1)
    print("OK: transformers loads the export with no missing or unexpected weights and computes the same "
          "logits and perplexity")


if __name__ == "__main__":
    main(*sys.argv[1:])
