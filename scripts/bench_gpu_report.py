"""Markdown report of scripts/bench-gpu from the raw files it leaves in OUT/gpu-raw.

    python3 scripts/bench_gpu_report.py OUT > OUT/gpu.md
"""

import glob
import json
import os
import re
import sys


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def perplexity(path):
    found = re.search(r"Final estimate: PPL = ([0-9.]+)", read_text(path))
    return float(found.group(1)) if found else None


def llama_rates(path):
    """(prefill tok/s, decode tok/s, backend) from llama-bench's JSON."""
    records = read_json(path) or []
    prefill = decode = None
    backend = ""
    for record in records:
        backend = record.get("backends", backend)
        if record.get("n_gen", 0) == 0:
            prefill = record.get("avg_ts")
        else:
            decode = record.get("avg_ts")
    return prefill, decode, backend


def main():
    out = sys.argv[1]
    raw = os.path.join(out, "gpu-raw")
    print("## GPU: edgechat's WebGPU backend (native wgpu) vs llama.cpp on the same GPU\n")
    adapter = read_text(os.path.join(raw, "adapter.txt")).strip().splitlines()
    for line in adapter:
        print(f"- {line.strip()}")
    bandwidth = read_json(os.path.join(raw, "bandwidth.json"))
    read_gbs = None
    if bandwidth:
        read_gbs = bandwidth["read_gb_s"]
        print(
            f"- measured memory bandwidth ({bandwidth['device']}, PyTorch, 4 GiB): "
            f"read {bandwidth['read_gb_s']:.0f} GB/s, copy {bandwidth['copy_gb_s']:.0f} GB/s (bytes read + written)"
        )
    any_run = next(iter(sorted(glob.glob(os.path.join(raw, "edgechat-*.json")))), None)
    prompt = (read_json(any_run) or {}).get("prompt_tokens", "?") if any_run else "?"
    print(
        f"- prompt {prompt} tokens, then 128 decoded tokens; edgechat: 2 measured runs after a warm-up, "
        "decode after the prompt; llama-bench: 2 repetitions, decode from an empty context\n"
    )

    print("### Correctness: perplexity of the same file and text (README.md, chunks of 256)\n")
    print("| model | webgpu | cpu | webgpu / cpu |")
    print("|---|--:|--:|--:|")
    for path in sorted(glob.glob(os.path.join(raw, "ppl-*-webgpu.txt"))):
        name = os.path.basename(path)[len("ppl-") : -len("-webgpu.txt")]
        gpu = perplexity(path)
        cpu = perplexity(os.path.join(raw, f"ppl-{name}-cpu.txt"))
        ratio = f"{gpu / cpu:.4f}" if gpu and cpu else "–"
        print(f"| {name} | {gpu or '–'} | {cpu or '–'} | {ratio} |")
    print()

    # Every model has a default run; variant names hold dashes, so models are found by it.
    models = sorted(os.path.basename(p)[len("edgechat-") : -len("-default.json")] for p in glob.glob(os.path.join(raw, "edgechat-*-default.json")))
    print("### Speed\n")
    print("| model | engine | variant | kernels | prefill tok/s | decode tok/s | decode GB/s | % of read bandwidth | decode vs llama.cpp |")
    print("|---|---|---|---|--:|--:|--:|--:|--:|")
    for model in models:
        l_prefill, l_decode, l_backend = llama_rates(os.path.join(raw, f"llama-{model}.json"))
        for path in sorted(glob.glob(os.path.join(raw, f"edgechat-{model}-*.json"))):
            variant = os.path.basename(path)[len(f"edgechat-{model}-") : -len(".json")]
            if variant.endswith("profile"):
                continue
            report = read_json(path)
            if not report:
                error = read_text(path[: -len(".json")] + ".err").strip().splitlines()
                print(f"| {model} | edgechat | {variant} | failed: {error[-1] if error else '?'} | | | | | |")
                continue
            gbs = report["decode_effective_gb_per_second"]
            share = f"{100 * gbs / read_gbs:.0f} %" if read_gbs else "–"
            versus = f"{report['decode_tokens_per_second'] / l_decode:.2f}×" if l_decode else "–"
            kernels = re.search(r"kernels (.*? per row)", report["backend_description"])
            print(
                f"| {model} | edgechat | {variant} | {kernels.group(1) if kernels else report['backend_description']} | "
                f"{report['prefill_tokens_per_second']:.0f} | {report['decode_tokens_per_second']:.1f} | {gbs:.0f} | {share} | {versus} |"
            )
        if l_decode:
            print(f"| {model} | llama.cpp | {l_backend} | | {l_prefill:.0f} | {l_decode:.1f} | | | 1.00× |")
        else:
            print(f"| {model} | llama.cpp | not run (see llama-build.log) | | | | | | |")
    print()

    for model in models:
        for path in sorted(glob.glob(os.path.join(raw, f"edgechat-{model}-*profile.json"))):
            variant = os.path.basename(path)[len(f"edgechat-{model}-") : -len(".json")]
            unprofiled = variant[: -len("profile")].rstrip("-") or "default"
            profile = read_json(path)
            default = read_json(os.path.join(raw, f"edgechat-{model}-{unprofiled}.json"))
            if not profile or not profile.get("kernel_time_per_token"):
                continue
            kernels = profile["kernel_time_per_token"]
            busy = sum(k["microseconds"] for k in kernels)
            print(f"### Where the decode time goes ({model}, {unprofiled}: timestamp queries around each dispatch)\n")
            if default:
                wall = 1e6 / default["decode_tokens_per_second"]
                print(
                    f"GPU busy {busy:.0f} µs per decoded token, against {wall:.0f} µs per token of the unprofiled "
                    f"decode: the GPU works {100 * busy / wall:.0f} % of the time; the rest is submission, "
                    f"readback and gaps between dispatches.\n"
                )
            print("| kernel | calls per token | µs per token | share of GPU time |")
            print("|---|--:|--:|--:|")
            for k in kernels:
                print(f"| {k['kernel']} | {k['calls']:.0f} | {k['microseconds']:.1f} | {100 * k['microseconds'] / busy:.1f} % |")
            print()

if __name__ == "__main__":
    main()
