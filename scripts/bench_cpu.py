"""edgechat vs llama.cpp on the CPU: prefill and decode tok/s on the same file, same threads,
next to the machine's measured memory bandwidth; and the perplexity of each engine on the same
text and file, so a speed-up never hides a numerical regression.

Each engine runs the same token counts; edgechat reports through `edgechat bench --json`, llama.cpp
is timed here through llama-cpp-python's low-level API. Figures are ratios (ours / llama.cpp):
absolute times on a shared 2-core machine do not carry. Perplexity follows llama.cpp's
llama-perplexity on both sides (chunks of --ctx tokens, BOS first, the second half scored).
"""
import argparse
import ctypes
import json
import os
import subprocess
import sys
import time

import re

import llama_cpp
import numpy as np

GGML_LOG_LEVEL_ERROR = 4


@llama_cpp.llama_log_callback
def quiet_llama_log(level, text, _user_data):
    """llama.cpp logs every tensor and graph input to stderr, through a Python logger that fails on
    UTF-8 split across messages: keep its errors only."""
    if level == GGML_LOG_LEVEL_ERROR:
        sys.stderr.write(text.decode("utf-8", "replace"))


llama_cpp.llama_log_set(quiet_llama_log, ctypes.c_void_p(0))

DEFAULT_MODELS = ["models/smollm2-135m-instruct-q4_1.gguf", "models/tiny-mistral.gguf"]


def load_llama(path, n_ctx, n_batch, threads, use_extra_bufts=False):
    """llama.cpp's model and a context of `n_ctx` tokens. use_extra_bufts=False keeps llama.cpp on
    its AVX2/AVX-512 CPU kernels: its AMX repacked buffers (chosen by default on Sapphire Rapids)
    crash in llama_decode with this build."""
    params = llama_cpp.llama_model_default_params()
    params.use_extra_bufts = use_extra_bufts
    model = llama_cpp.llama_model_load_from_file(path.encode(), params)
    vocab = llama_cpp.llama_model_get_vocab(model)
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = n_ctx
    cparams.n_batch = cparams.n_ubatch = n_batch
    cparams.n_threads = cparams.n_threads_batch = threads
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    return model, vocab, llama_cpp.llama_vocab_n_tokens(vocab), ctx


def bench_llama_cpp(path, prompt_tokens, gen_tokens, threads, repetitions, use_extra_bufts=False):
    model, vocab, n_vocab, ctx = load_llama(path, prompt_tokens + gen_tokens + 16, prompt_tokens, threads, use_extra_bufts)
    # Deterministic, varied token ids (the content does not change the work done).
    tokens = [(i * 7919 + 13) % n_vocab for i in range(prompt_tokens + gen_tokens)]

    best_prefill, best_decode = 0.0, 0.0
    for _ in range(repetitions):
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        # The batch only points at the ids: keep the array alive while it is used.
        prompt = (llama_cpp.llama_token * prompt_tokens)(*tokens[:prompt_tokens])
        batch = llama_cpp.llama_batch_get_one(prompt, prompt_tokens)
        start = time.perf_counter()
        assert llama_cpp.llama_decode(ctx, batch) == 0
        llama_cpp.llama_get_logits_ith(ctx, -1)
        prefill = prompt_tokens / (time.perf_counter() - start)

        start = time.perf_counter()
        for t in tokens[prompt_tokens:]:
            token = (llama_cpp.llama_token * 1)(t)
            one = llama_cpp.llama_batch_get_one(token, 1)
            assert llama_cpp.llama_decode(ctx, one) == 0
            llama_cpp.llama_get_logits_ith(ctx, -1)
        decode = gen_tokens / (time.perf_counter() - start)
        best_prefill, best_decode = max(best_prefill, prefill), max(best_decode, decode)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    return {"prefill_tok_s": best_prefill, "decode_tok_s": best_decode}


def memory_bandwidth_gb_s(gib=1, repetitions=3):
    """Read bandwidth of one core: the best of a few sums over `gib` GiB of float32."""
    data = np.ones(gib * (1 << 30) // 4, dtype=np.float32)
    best = 0.0
    for _ in range(repetitions):
        start = time.perf_counter()
        data.sum()
        best = max(best, data.nbytes / (time.perf_counter() - start) / 1e9)
    return best


def perplexity_llama_cpp(path, text, n_ctx, max_chunks, threads):
    model, vocab, n_vocab, ctx = load_llama(path, n_ctx, n_ctx, threads)
    raw = text.encode()
    buf = (llama_cpp.llama_token * (len(raw) + 16))()
    n = llama_cpp.llama_tokenize(vocab, raw, len(raw), buf, len(buf), True, False)
    tokens = list(buf[:n])
    add_bos = llama_cpp.llama_vocab_get_add_bos(vocab)
    bos = llama_cpp.llama_vocab_bos(vocab)
    n_chunks = min(len(tokens) // n_ctx, max_chunks)
    nll_sum, count = 0.0, 0
    batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
    for c in range(n_chunks):
        chunk = tokens[c * n_ctx:(c + 1) * n_ctx]
        if add_bos:
            chunk[0] = bos
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        batch.n_tokens = n_ctx
        for i, t in enumerate(chunk):
            batch.token[i] = t
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = 1
        assert llama_cpp.llama_decode(ctx, batch) == 0
        for pos in range(n_ctx // 2, n_ctx - 1):
            row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, pos), shape=(n_vocab,)).astype(np.float64)
            top = row.max()
            nll_sum += top + np.log(np.exp(row - top).sum()) - row[chunk[pos + 1]]
            count += 1
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    return {"ppl": float(np.exp(nll_sum / count)), "tokens_scored": count, "text_tokens": len(tokens)}


def perplexity_edgechat(path, text_file, n_ctx, max_chunks):
    run = subprocess.run(["target/release/edgechat", "perplexity", "--model", path, "--file", text_file,
                          "--ctx", str(n_ctx), "--chunks", str(max_chunks)], check=True, capture_output=True, text=True)
    ppl = float(re.search(r"PPL = ([0-9.]+)", run.stdout).group(1))
    scored = int(re.search(r"(\d+) tokens scored", run.stderr).group(1))
    return {"ppl": ppl, "tokens_scored": scored}


def bench_edgechat(path, prompt_tokens, gen_tokens, threads, repetitions):
    out = subprocess.run(
        ["target/release/edgechat", "bench", "--model", path, "--prompt-tokens", str(prompt_tokens),
         "--gen-tokens", str(gen_tokens), "--threads", str(threads), "--repetitions", str(repetitions), "--json"],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--repetitions", type=int, default=3)
    ap.add_argument("--text", default="/usr/share/common-licenses/GPL-3",
                    help="text for the perplexity comparison (an English file every Debian has)")
    ap.add_argument("--ppl-ctx", type=int, default=512)
    ap.add_argument("--ppl-chunks", type=int, default=4)
    ap.add_argument("--ppl-max-bytes", type=int, default=8_000_000_000,
                    help="skip the perplexity comparison on files larger than this (the 4.9 GB "
                         "8B-shaped model takes about 4 minutes for both engines on 2 cores)")
    ap.add_argument("--json", help="also write the raw numbers to this file")
    args = ap.parse_args()
    raw = {"threads": args.threads, "prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens,
           "models": [], "perplexity": []}
    llama_cpp.llama_backend_init()
    bandwidth = memory_bandwidth_gb_s()
    print(json.dumps({"memory_read_gb_s_one_core": bandwidth}), file=sys.stderr)
    raw["memory_read_gb_s_one_core"] = bandwidth

    rows = []
    for path in args.models:
        size = os.path.getsize(path)
        ours = bench_edgechat(path, args.prompt_tokens, args.gen_tokens, args.threads, args.repetitions)
        ref = bench_llama_cpp(path, args.prompt_tokens, args.gen_tokens, args.threads, args.repetitions)
        rows.append((path, size, ours, ref))
        print(json.dumps({"model": path, "edgechat": ours, "llama_cpp": ref}), file=sys.stderr)
        raw["models"].append({"model": os.path.basename(path), "edgechat": ours, "llama_cpp": ref})

    print(f"threads {args.threads}, prompt {args.prompt_tokens} tokens, decode {args.gen_tokens} tokens, best of {args.repetitions}; "
          f"memory read bandwidth {bandwidth:.1f} GB/s (numpy sum over 1 GiB, one core)\n")
    print("| model | file MB | prefill tok/s ours | llama.cpp | ratio | decode tok/s ours | llama.cpp | ratio | decode GB/s ours | llama.cpp |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path, size, ours, ref in rows:
        gb_per_token = ours["weight_bytes_per_token"] / 1e9
        print(f"| {os.path.basename(path)} | {size / 1e6:.0f} "
              f"| {ours['prefill_tokens_per_second']:.1f} | {ref['prefill_tok_s']:.1f} | {ours['prefill_tokens_per_second'] / ref['prefill_tok_s']:.2f}x "
              f"| {ours['decode_tokens_per_second']:.1f} | {ref['decode_tok_s']:.1f} | {ours['decode_tokens_per_second'] / ref['decode_tok_s']:.2f}x "
              f"| {ours['decode_tokens_per_second'] * gb_per_token:.2f} | {ref['decode_tok_s'] * gb_per_token:.2f} |")

    text = open(args.text, encoding="utf-8").read()
    print(f"\nPerplexity on {args.text} ({args.ppl_chunks} chunks of {args.ppl_ctx} tokens, the second half of each scored)\n")
    print("| model | ours | llama.cpp | ratio | tokens scored (ours / llama.cpp) |")
    print("|---|---|---|---|---|")
    for path, size, _, _ in rows:
        if size > args.ppl_max_bytes:
            print(f"| {os.path.basename(path)} | skipped ({size / 1e9:.1f} GB) | | | |")
            continue
        ours = perplexity_edgechat(path, args.text, args.ppl_ctx, args.ppl_chunks)
        ref = perplexity_llama_cpp(path, text, args.ppl_ctx, args.ppl_chunks, args.threads)
        print(json.dumps({"model": path, "perplexity": {"edgechat": ours, "llama_cpp": ref}}), file=sys.stderr)
        raw["perplexity"].append({"model": os.path.basename(path), "edgechat": ours, "llama_cpp": ref})
        print(f"| {os.path.basename(path)} | {ours['ppl']:.4f} | {ref['ppl']:.4f} | {ours['ppl'] / ref['ppl']:.4f} "
              f"| {ours['tokens_scored']} / {ref['tokens_scored']} |")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)


if __name__ == "__main__":
    main()
