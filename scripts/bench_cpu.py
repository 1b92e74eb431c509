"""edgechat vs llama.cpp on the CPU: prefill and decode tok/s on the same file, same threads.

Each engine runs the same token counts; edgechat reports through `edgechat bench --json`, llama.cpp
is timed here through llama-cpp-python's low-level API. Figures are ratios (ours / llama.cpp):
absolute times on a shared 2-core machine do not carry.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import llama_cpp

DEFAULT_MODELS = ["models/smollm2-135m-instruct-q4_1.gguf", "models/tiny-mistral.gguf"]


def bench_llama_cpp(path, prompt_tokens, gen_tokens, threads, repetitions, use_extra_bufts=False):
    # use_extra_bufts=False keeps llama.cpp on its AVX2/AVX-512 CPU kernels: its AMX repacked
    # buffers (chosen by default on Sapphire Rapids) crash in llama_decode with this build.
    params = llama_cpp.llama_model_default_params()
    params.use_extra_bufts = use_extra_bufts
    model = llama_cpp.llama_model_load_from_file(path.encode(), params)
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = prompt_tokens + gen_tokens + 16
    cparams.n_batch = prompt_tokens
    cparams.n_ubatch = prompt_tokens
    cparams.n_threads = threads
    cparams.n_threads_batch = threads
    ctx = llama_cpp.llama_init_from_model(model, cparams)
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
    args = ap.parse_args()
    llama_cpp.llama_backend_init()

    rows = []
    for path in args.models:
        size = os.path.getsize(path)
        ours = bench_edgechat(path, args.prompt_tokens, args.gen_tokens, args.threads, args.repetitions)
        ref = bench_llama_cpp(path, args.prompt_tokens, args.gen_tokens, args.threads, args.repetitions)
        rows.append((path, size, ours, ref))
        print(json.dumps({"model": path, "edgechat": ours, "llama_cpp": ref}), file=sys.stderr)

    print(f"threads {args.threads}, prompt {args.prompt_tokens} tokens, decode {args.gen_tokens} tokens, best of {args.repetitions}\n")
    print("| model | file MB | prefill tok/s ours | llama.cpp | ratio | decode tok/s ours | llama.cpp | ratio | decode GB/s ours | llama.cpp |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path, size, ours, ref in rows:
        gb_per_token = ours["weight_bytes_per_token"] / 1e9
        print(f"| {os.path.basename(path)} | {size / 1e6:.0f} "
              f"| {ours['prefill_tokens_per_second']:.1f} | {ref['prefill_tok_s']:.1f} | {ours['prefill_tokens_per_second'] / ref['prefill_tok_s']:.2f}x "
              f"| {ours['decode_tokens_per_second']:.1f} | {ref['decode_tok_s']:.1f} | {ours['decode_tokens_per_second'] / ref['decode_tok_s']:.2f}x "
              f"| {ours['decode_tokens_per_second'] * gb_per_token:.2f} | {ref['decode_tok_s'] * gb_per_token:.2f} |")


if __name__ == "__main__":
    main()
