"""The project's goals against the figures of one scripts/bench run (the raw JSON each part
leaves in OUT), as the Markdown table that opens OUT/report.md.

    python3 scripts/bench_goals.py OUT
"""

import glob
import json
import os
import sys


def load(out, name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def verdict(met):
    return "met" if met else "**not met**"


def cpu_rows(cpu):
    for model in cpu["models"]:
        ours = model["edgechat"]["decode_tokens_per_second"]
        theirs = model["llama_cpp"]["decode_tok_s"]
        ratio = ours / theirs
        yield (
            f"native CPU decode ≥ 1.0× llama.cpp ({model['model']}, {cpu['threads']} threads)",
            f"{ours:.1f} / {theirs:.1f} tok/s = {ratio:.2f}×",
            verdict(ratio >= 1.0),
        )
    for model in cpu["perplexity"]:
        ratio = model["edgechat"]["ppl"] / model["llama_cpp"]["ppl"]
        yield (
            f"perplexity within 2 % of llama.cpp's ({model['model']})",
            f"{model['edgechat']['ppl']:.4f} / {model['llama_cpp']['ppl']:.4f} = {ratio:.4f}",
            verdict(abs(ratio - 1) <= 0.02),
        )


def browser_rows(browser):
    results = [r for r in browser["results"] if r.get("decodeTokS")]
    wllama = [r for r in results if r["engine"] == "wllama"]
    if not wllama:
        return
    best = max(wllama, key=lambda r: r["decodeTokS"])
    for r in results:
        if r["engine"] != "edgechat":
            continue
        if r["backend"].startswith("webgpu"):
            ratio = r["decodeTokS"] / best["decodeTokS"]
            yield (
                f"browser WebGPU decode ≥ 1.5× wllama's best ({r['backend']})",
                f"{r['decodeTokS']:.1f} / {best['decodeTokS']:.1f} tok/s ({best['label']}) = {ratio:.2f}×",
                verdict(ratio >= 1.5),
            )
        else:
            per_thread = [w for w in wllama if w["threads"] == 1]
            if not per_thread:
                continue
            one = per_thread[0]
            ratio = (r["decodeTokS"] / r["threads"]) / one["decodeTokS"]
            yield (
                "wasm CPU decode ≥ 3× wllama's per thread",
                f"{r['decodeTokS']:.1f} tok/s on {r['threads']} thread / {one['decodeTokS']:.1f} on 1 = {ratio:.2f}×",
                verdict(ratio >= 3.0),
            )


def load_rows(heap):
    # wasm memory never shrinks: after the load it is the load's peak.
    peak = max(run["info"]["wasm_memory_bytes"] for run in heap["runs"]) / 1e6
    yield (
        f"peak wasm memory ≤ 256 MB loading {heap['model']} ({heap['size'] / 1e9:.1f} GB)",
        f"{peak:.0f} MB",
        verdict(peak <= 256),
    )


def beyond_floor(cells, path, mode):
    """The router's p50 beyond workerd's own cost for a proxied request (the passthrough worker,
    same run), where both were measured on their own socket."""
    floor = cells.get(("passthrough-js", mode, 1))
    cell = cells.get((path, mode, 1))
    if path == "edgechat" or not floor or not floor.get("latency_ms"):
        return ""
    return f" (+{cell['latency_ms']['p50'] - floor['latency_ms']['p50']:.2f} ms p50 beyond workerd's floor)"


def router_rows(router):
    cells = {(c["path"], c["mode"], c["concurrency"]): c for c in router["cells"]}
    direct = {mode: cells.get(("direct", mode, 1)) for mode in ("json", "stream")}
    for path in ("edgechat-bare", "edgechat"):
        for mode in ("json", "stream"):
            cell = cells.get((path, mode, 1))
            if not cell or not direct[mode] or not cell.get("latency_ms"):
                continue
            added50 = cell["latency_ms"]["p50"] - direct[mode]["latency_ms"]["p50"]
            added99 = cell["latency_ms"]["p99"] - direct[mode]["latency_ms"]["p99"]
            yield (
                f"router added latency p50 ≤ 1 ms, p99 ≤ 5 ms ({path}, {mode}, 1 at a time)",
                f"p50 +{added50:.2f} ms, p99 +{added99:.2f} ms{beyond_floor(cells, path, mode)}",
                verdict(added50 <= 1 and added99 <= 5),
            )
    for key, ratio in router.get("throughput_ratio_vs_litellm", {}).items():
        if key.split("/")[0] not in ("edgechat-bare", "edgechat"):
            continue
        yield (
            f"router throughput ≥ 5× LiteLLM's ({key}, 64 at a time)",
            f"{ratio:.2f}×",
            verdict(ratio >= 5),
        )


def gpu_rows(out):
    raw = os.path.join(out, "gpu-raw")
    for default in sorted(glob.glob(os.path.join(raw, "edgechat-*-default.json"))):
        model = os.path.basename(default)[len("edgechat-") : -len("-default.json")]
        ours = load(raw, os.path.basename(default))
        llama = load(raw, f"llama-{model}.json") or []
        decode = [r["avg_ts"] for r in llama if r.get("n_gen", 0) > 0]
        if ours and decode:
            ratio = ours["decode_tokens_per_second"] / decode[0]
            yield (
                f"native WebGPU decode on this GPU vs llama.cpp ({model}; no goal set, for reference)",
                f"{ours['decode_tokens_per_second']:.1f} / {decode[0]:.1f} tok/s = {ratio:.2f}×",
                "–",
            )


def main():
    out = sys.argv[1]
    rows = []
    for name, make in (
        ("cpu.json", cpu_rows),
        ("browser.json", browser_rows),
        ("load-heap.json", load_rows),
        ("router.json", router_rows),
    ):
        data = load(out, name)
        if data:
            rows.extend(make(data))
    rows.extend(gpu_rows(out))
    print("| goal | this run | |")
    print("|---|---|---|")
    for goal, figure, met in rows:
        print(f"| {goal} | {figure} | {met} |")


if __name__ == "__main__":
    main()
