// Sampling: the next token chosen from one row of logits where they are, so only its id is read
// back. One workgroup of 256 threads does it all in one dispatch, with the semantics of
// `Sampler::sample` (sampling.rs) without penalties:
//   - greedy: the largest logit, the lowest id on ties; NaN never wins (it counts as -inf);
//   - otherwise top-k, then top-p (its probabilities at temperature 1, over the top-k set) and
//     min-p, then a draw at temperature T from the survivors.
//
// Nothing is sorted. Logits are read as u32 and compared through an order-preserving key of their
// bits (NaN becomes -inf; -0 becomes +0, as equal as in the CPU's argmax, where its top-k puts -0
// below +0), so every threshold is exact and the CPU's order, logit descending then id ascending,
// is "key descending, then id ascending". Ties are cut exactly as there: top-k keeps exactly k.
// Steps:
//   1. max and argmax (strided: every thread reads neighbouring words);
//   2. top-k: the k-th largest key by an 8-bit radix select (four passes counting into a 256-bin
//      histogram); of the logits equal to it, the lowest ids are kept until there are k;
//   3. the top-k members that pass min-p are compacted into `scratch`: each thread owns the ids
//      [start, end) and writes its members at `start..`, so `scratch` read thread after thread is
//      in id order. The sums of exp(l − max) over the top-k set (top-p's normalizer Z) and over
//      the compacted ones come out of the same pass;
//   4. top-p: a search on the key (four keys per round, so a fifth of the range is left) for the
//      largest threshold t whose compacted members with key ≥ t reach top_p · Z, then how many
//      of the ones equal to t are needed (lowest ids first). The CPU applies top-p after min-p;
//      min-p only removes a tail of the order, so searching over the compacted members is the
//      same;
//   5. the draw: weights exp((l − max) / T) summed per thread, the thread sums turned into one
//      prefix, and the thread whose interval holds `draw · total` walks its survivors in id
//      order. The CPU walks its survivors by descending logit instead: the same uniform may pick
//      a different token, with the same distribution. A draw past the end (rounding) takes the
//      last survivor that has weight.
// Sums are f32 (the CPU's are f64): a top-p boundary within rounding of top_p may cut one token
// differently.

struct Params {
    n: u32,
    // 0 = off (the host also turns it off when k ≥ n).
    top_k: u32,
    greedy: u32,
    top_p_on: u32,
    min_p_on: u32,
    top_p: f32,
    // ln(min_p), computed on the host as the CPU does.
    log_min_p: f32,
    // 1 / temperature.
    inv_temp: f32,
    // Where the draw lands, in [0, 1).
    draw: f32,
}

@group(0) @binding(0) var<storage, read> logits: array<u32>;
// (key, id) of the compacted candidates; a key of 0 marks one dropped by top-p.
@group(0) @binding(1) var<storage, read_write> scratch: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read_write> token: array<u32>;
@group(0) @binding(3) var<uniform> p: Params;

const THREADS: u32 = 256u;
// Reductions and scans go in two levels: GROUPS groups of GROUPS threads.
const GROUPS: u32 = 16u;
const NEG_INF_KEY: u32 = 0x007fffffu;
const POS_INF_KEY: u32 = 0xff800000u;
const ALL: u32 = 0xffffffffu;

var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> red_u: array<vec2<u32>, 256>;
var<workgroup> group_u: array<vec2<u32>, 16>;
var<workgroup> red_f: array<vec4<f32>, 256>;
var<workgroup> group_f: array<vec4<f32>, 16>;
var<workgroup> chosen: vec2<u32>;
var<workgroup> last_positive: array<u32, 256>;
var<workgroup> picked: u32;

// Order-preserving: a < b as floats ⇔ key(a) < key(b). Keys of real logits are ≥ NEG_INF_KEY, so
// 0 is below all of them.
fn key_of(bits: u32) -> u32 {
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        return NEG_INF_KEY; // NaN
    }
    if (bits == 0x80000000u) {
        return 0x80000000u; // -0 ties with +0, as in the CPU's argmax
    }
    if ((bits & 0x80000000u) != 0u) {
        return ~bits;
    }
    return bits | 0x80000000u;
}

fn value_of(key: u32) -> f32 {
    if ((key & 0x80000000u) != 0u) {
        return bitcast<f32>(key & 0x7fffffffu);
    }
    return bitcast<f32>(~key);
}

// exp((l − max) · inv_temp), exactly 1 for the max and 0 for -inf (and for the key 0), without
// relying on infinities inside the shader.
fn weight(key: u32, max_value: f32, inv_temp: f32) -> f32 {
    if (key <= NEG_INF_KEY) {
        return 0.0;
    }
    let d = max(value_of(key) - max_value, -3.0e38);
    if (d >= 0.0) {
        return 1.0;
    }
    return exp(max(d * inv_temp, -200.0));
}

// (key, id) a beats (key, id) b: larger key, or the same key and a lower id.
fn beats(a: vec2<u32>, b: vec2<u32>) -> bool {
    return a.x > b.x || (a.x == b.x && a.y < b.y);
}

// The winning (key, id) over all threads, the same value in every thread.
fn reduce_max(tid: u32, x: vec2<u32>) -> vec2<u32> {
    red_u[tid] = x;
    workgroupBarrier();
    if (tid < GROUPS) {
        var best = red_u[tid * GROUPS];
        for (var j = 1u; j < GROUPS; j++) {
            let other = red_u[tid * GROUPS + j];
            if (beats(other, best)) {
                best = other;
            }
        }
        group_u[tid] = best;
    }
    let groups = workgroupUniformLoad(&group_u);
    var best = groups[0];
    for (var j = 1u; j < GROUPS; j++) {
        if (beats(groups[j], best)) {
            best = groups[j];
        }
    }
    return best;
}

// Sum over all threads, the same value in every thread (always added in the same order, so a
// set that grows never sums to less).
fn sum4(tid: u32, x: vec4<f32>) -> vec4<f32> {
    red_f[tid] = x;
    workgroupBarrier();
    if (tid < GROUPS) {
        var s = vec4<f32>(0.0);
        for (var j = 0u; j < GROUPS; j++) {
            s += red_f[tid * GROUPS + j];
        }
        group_f[tid] = s;
    }
    let groups = workgroupUniformLoad(&group_f);
    var total = vec4<f32>(0.0);
    for (var j = 0u; j < GROUPS; j++) {
        total += groups[j];
    }
    return total;
}

// The sum of `x` over the threads before this one.
fn exclusive_scan(tid: u32, x: u32) -> u32 {
    red_u[tid] = vec2<u32>(x, 0u);
    workgroupBarrier();
    if (tid < GROUPS) {
        var s = 0u;
        for (var j = 0u; j < GROUPS; j++) {
            s += red_u[tid * GROUPS + j].x;
        }
        group_u[tid] = vec2<u32>(s, 0u);
    }
    workgroupBarrier();
    let g = tid / GROUPS;
    var before = 0u;
    for (var j = 0u; j < g; j++) {
        before += group_u[j].x;
    }
    for (var j = g * GROUPS; j < tid; j++) {
        before += red_u[j].x;
    }
    // The next reduction writes red_u and group_u again.
    workgroupBarrier();
    return before;
}

// The k-th largest key (1 ≤ k ≤ n) and how many logits equal to it belong to the k largest (the
// rest of the k are above it): four passes of an 8-bit radix select, most significant byte first.
fn kth_largest(tid: u32, k: u32) -> vec2<u32> {
    var prefix = 0u;
    var mask = 0u;
    var remaining = k;
    for (var digit = 0u; digit < 4u; digit++) {
        let shift = 24u - 8u * digit;
        atomicStore(&hist[tid], 0u);
        workgroupBarrier();
        for (var i = tid; i < p.n; i += THREADS) {
            let key = key_of(logits[i]);
            if ((key & mask) == prefix) {
                atomicAdd(&hist[(key >> shift) & 255u], 1u);
            }
        }
        workgroupBarrier();
        // Thread b owns bin b: the bin where the count from the top reaches `remaining` is chosen.
        let count = atomicLoad(&hist[tid]);
        if (tid < GROUPS) {
            var s = 0u;
            for (var j = 0u; j < GROUPS; j++) {
                s += atomicLoad(&hist[tid * GROUPS + j]);
            }
            group_u[tid] = vec2<u32>(s, 0u);
        }
        workgroupBarrier();
        let g = tid / GROUPS;
        var above = 0u;
        for (var j = g + 1u; j < GROUPS; j++) {
            above += group_u[j].x;
        }
        for (var j = tid + 1u; j < (g + 1u) * GROUPS; j++) {
            above += atomicLoad(&hist[j]);
        }
        if (above < remaining && remaining <= above + count) {
            chosen = vec2<u32>(tid, above);
        }
        let bin = workgroupUniformLoad(&chosen);
        prefix |= bin.x << shift;
        mask |= 255u << shift;
        remaining -= bin.y;
    }
    return vec2<u32>(prefix, remaining);
}

// The mass exp(l − max) of the compacted candidates with key ≥ each of four thresholds.
fn mass_at_least(tid: u32, start: u32, count: u32, thresholds: vec4<u32>, max_value: f32) -> vec4<f32> {
    var mass = vec4<f32>(0.0);
    for (var j = start; j < start + count; j++) {
        let key = scratch[j].x;
        let e = weight(key, max_value, 1.0);
        mass += select(vec4<f32>(0.0), vec4<f32>(e), vec4<u32>(key) >= thresholds);
    }
    return sum4(tid, mass);
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) tid: u32) {
    let n = p.n;
    // This thread's contiguous ids, for the passes where id order matters.
    let chunk = (n + THREADS - 1u) / THREADS;
    let start = min(tid * chunk, n);
    let end = min(start + chunk, n);

    // 1. Max and argmax. A thread without logits offers (0, 0), below every real key.
    var best = vec2<u32>(0u, 0u);
    for (var i = tid; i < n; i += THREADS) {
        let key = key_of(logits[i]);
        if (key > best.x) {
            best = vec2<u32>(key, i);
        }
    }
    let top = reduce_max(tid, best);
    let max_key = top.x;
    // Greedy, or no distribution to draw from (all -inf or NaN, some +inf, no logits): argmax.
    if (p.greedy != 0u || max_key <= NEG_INF_KEY || max_key >= POS_INF_KEY) {
        if (tid == 0u) {
            token[0] = top.y;
        }
        return;
    }
    let max_value = value_of(max_key);

    // 2. top-k: members have key > cut_k.x, or key == cut_k.x and are among the first cut_k.y
    // such logits by id. Off: every key is > 0.
    var cut_k = vec2<u32>(0u, ALL);
    var tie_quota = 0u;
    if (p.top_k != 0u) {
        cut_k = kth_largest(tid, p.top_k);
        var ties = 0u;
        for (var i = start; i < end; i++) {
            if (key_of(logits[i]) == cut_k.x) {
                ties++;
            }
        }
        let before = exclusive_scan(tid, ties);
        tie_quota = min(ties, cut_k.y - min(cut_k.y, before));
    }

    // 3. Compaction of the top-k members that pass min-p.
    var min_p_key = 0u;
    if (p.min_p_on != 0u) {
        min_p_key = key_of(bitcast<u32>(max_value + p.log_min_p));
    }
    var count = 0u;
    var ties_seen = 0u;
    // (top-k set, compacted) sums of exp(l − max).
    var mass = vec4<f32>(0.0);
    for (var i = start; i < end; i++) {
        let key = key_of(logits[i]);
        var member = key > cut_k.x;
        if (key == cut_k.x) {
            member = ties_seen < tie_quota;
            ties_seen++;
        }
        if (!member) {
            continue;
        }
        let e = weight(key, max_value, 1.0);
        mass.x += e;
        if (key >= min_p_key) {
            scratch[start + count] = vec2<u32>(key, i);
            count++;
            mass.y += e;
        }
    }

    // 4. top-p: survivors have key > cut_p.x, or key == cut_p.x and are among the first
    // quota_p such candidates. Off (or cutting nothing that min-p left): all of them.
    if (p.top_p_on != 0u) {
        let sums = sum4(tid, mass);
        let needed = p.top_p * sums.x;
        var cut_p = vec2<u32>(0u, ALL);
        if (sums.y >= needed) {
            // Every candidate has key ≥ lo, so the mass at lo is sums.y ≥ needed; above the max it
            // is 0. Find the largest key whose mass still reaches `needed`, testing four keys
            // evenly spread over (lo, hi) per round: a fifth of the range is left each time.
            var lo = max(cut_k.x, min_p_key);
            var hi = max_key + 1u;
            var mass_hi = 0.0;
            loop {
                let span = hi - lo;
                if (span <= 1u) {
                    break;
                }
                let parts = vec4<u32>(1u, 2u, 3u, 4u);
                let keys = lo + (span / 5u) * parts + ((span % 5u) * parts) / 5u;
                let m = mass_at_least(tid, start, count, keys, max_value);
                // Masses fall as keys rise: lo moves to the last key that still reaches `needed`,
                // hi to the first that does not.
                var next_hi = hi;
                var next_mass_hi = mass_hi;
                for (var j = 3; j >= 0; j--) {
                    if (m[j] >= needed) {
                        lo = keys[j];
                        break;
                    }
                    next_hi = keys[j];
                    next_mass_hi = m[j];
                }
                hi = next_hi;
                mass_hi = next_mass_hi;
            }
            // The mass jumps at lo, so the candidates there have weight: as many as it takes to
            // reach `needed`, at least one.
            let share = (needed - mass_hi) / weight(lo, max_value, 1.0);
            var quota = ALL;
            if (share < 4.0e9) {
                quota = max(1u, u32(ceil(max(share, 0.0))));
            }
            cut_p = vec2<u32>(lo, quota);
        }
        var ties = 0u;
        for (var j = start; j < start + count; j++) {
            if (scratch[j].x == cut_p.x) {
                ties++;
            }
        }
        let before = exclusive_scan(tid, ties);
        let quota_p = min(ties, cut_p.y - min(cut_p.y, before));
        // Drop the rest (key 0 has no weight).
        var seen = 0u;
        for (var j = start; j < start + count; j++) {
            let key = scratch[j].x;
            if (key < cut_p.x || (key == cut_p.x && seen >= quota_p)) {
                scratch[j].x = 0u;
            }
            if (key == cut_p.x) {
                seen++;
            }
        }
    }

    // 5. The draw. This thread's weight, and its last survivor with weight.
    var mine = 0.0;
    var last = ALL;
    for (var j = start; j < start + count; j++) {
        let w = weight(scratch[j].x, max_value, p.inv_temp);
        mine += w;
        if (w > 0.0) {
            last = scratch[j].y;
        }
    }
    red_f[tid] = vec4<f32>(mine, 0.0, 0.0, 0.0);
    last_positive[tid] = last;
    if (tid == 0u) {
        picked = ALL;
    }
    workgroupBarrier();
    if (tid < GROUPS) {
        var s = 0.0;
        for (var j = 0u; j < GROUPS; j++) {
            s += red_f[tid * GROUPS + j].x;
        }
        group_f[tid] = vec4<f32>(s, 0.0, 0.0, 0.0);
    }
    let groups = workgroupUniformLoad(&group_f);
    // This thread's interval [lower, upper) of the prefix. Every bound is computed the same way
    // by the two threads that share it, so the intervals tile [0, total) without gaps.
    let g = tid / GROUPS;
    var total = 0.0;
    var group_start = 0.0;
    for (var j = 0u; j < GROUPS; j++) {
        if (j == g) {
            group_start = total;
        }
        total += groups[j].x;
    }
    var within = 0.0;
    for (var j = g * GROUPS; j < tid; j++) {
        within += red_f[j].x;
    }
    let lower = group_start + within;
    let upper = group_start + (within + mine);
    let landing = p.draw * total;
    // total ≥ 1 (the max survives with weight 1) unless something overflowed.
    let total_ok = total >= 1.0 && total <= 3.0e38;
    if (total_ok && lower <= landing && landing < upper) {
        var running = lower;
        var pick = last;
        for (var j = start; j < start + count; j++) {
            running += weight(scratch[j].x, max_value, p.inv_temp);
            if (landing < running) {
                pick = scratch[j].y;
                break;
            }
        }
        picked = pick;
    }
    workgroupBarrier();
    if (tid == 0u) {
        var result = picked;
        if (result == ALL) {
            // No usable total: the argmax (the CPU's first candidate). A draw past the end: the
            // last survivor with weight.
            result = top.y;
            if (total_ok) {
                for (var t = THREADS; t > 0u; t--) {
                    if (red_f[t - 1u].x > 0.0) {
                        result = last_positive[t - 1u];
                        break;
                    }
                }
            }
        }
        token[0] = result;
    }
}
