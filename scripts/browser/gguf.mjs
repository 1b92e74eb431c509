// Just enough of a GGUF reader to estimate how many weight bytes one decode
// step reads: the sizes of the tensors as stored in the file (what llama.cpp
// streams through on its CPU path). Reads only the header, never the data.
import fs from 'node:fs';

const SCALAR = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };

export function readGgufHeader(file) {
  const fd = fs.openSync(file, 'r');
  const size = fs.fstatSync(fd).size;
  // Grow the buffer until the header fits (vocab arrays can be a few MB).
  for (let len = 1 << 22; ; len *= 2) {
    const buf = Buffer.alloc(Math.min(len, size));
    fs.readSync(fd, buf, 0, buf.length, 0);
    try {
      const h = parse(buf, size);
      fs.closeSync(fd);
      return h;
    } catch (e) {
      if (!(e instanceof RangeError) || buf.length === size) { fs.closeSync(fd); throw e; }
    }
  }
}

function parse(buf, fileSize) {
  let p = 0;
  const u32 = () => { const v = buf.readUInt32LE(p); p += 4; return v; };
  const u64 = () => { const v = Number(buf.readBigUInt64LE(p)); p += 8; return v; };
  const str = () => { const n = u64(); const s = buf.toString('utf8', p, p + n); if (p + n > buf.length) throw new RangeError('short'); p += n; return s; };
  const value = (t) => {
    if (t === 8) return str();
    if (t === 9) {
      const et = u32(), n = u64();
      if (et === 8) { const a = []; for (let i = 0; i < n; i++) a.push(str()); return a; }
      if (et === 9) throw new Error('nested GGUF arrays');
      p += SCALAR[et] * n; if (p > buf.length) throw new RangeError('short');
      return { length: n };
    }
    const v = t === 4 ? buf.readUInt32LE(p) : t === 5 ? buf.readInt32LE(p) : t === 6 ? buf.readFloatLE(p)
      : t === 7 ? buf[p] !== 0 : t === 10 ? Number(buf.readBigUInt64LE(p)) : t === 0 ? buf[p] : null;
    p += SCALAR[t];
    return v;
  };

  if (buf.toString('ascii', 0, 4) !== 'GGUF') throw new Error('not a GGUF file');
  p = 4;
  const version = u32(), nTensors = u64(), nKv = u64();
  const kv = {};
  for (let i = 0; i < nKv; i++) { const k = str(); kv[k] = value(u32()); }
  const tensors = [];
  for (let i = 0; i < nTensors; i++) {
    const name = str(), nd = u32(), dims = [];
    for (let d = 0; d < nd; d++) dims.push(u64());
    tensors.push({ name, dims, type: u32(), offset: u64() });
  }
  const align = kv['general.alignment'] || 32;
  const dataStart = Math.ceil(p / align) * align;
  // Sizes from the offsets (no per-type block tables needed); includes padding.
  const byOffset = [...tensors].sort((a, b) => a.offset - b.offset);
  byOffset.forEach((t, i) => {
    const next = i + 1 < byOffset.length ? byOffset[i + 1].offset : fileSize - dataStart;
    t.bytes = next - t.offset;
  });
  return { version, kv, tensors, dataStart, fileSize };
}

// Bytes of weights one decode token reads: every tensor except the token
// embedding table (one row is gathered), unless the embedding is tied to the
// output head, in which case the LM head reads all of it.
export function decodeWeightBytes(h) {
  const emb = h.tensors.find((t) => t.name === 'token_embd.weight');
  const tied = !h.tensors.some((t) => t.name === 'output.weight');
  const all = h.tensors.reduce((s, t) => s + t.bytes, 0);
  const embBytes = emb ? emb.bytes : 0;
  return { bytes: all - (tied ? 0 : embBytes), tied, totalTensorBytes: all, embeddingBytes: embBytes };
}

export function describeModel(file) {
  const h = readGgufHeader(file);
  const arch = h.kv['general.architecture'];
  const tokens = h.kv['tokenizer.ggml.tokens'];
  return {
    arch,
    name: h.kv['general.name'],
    nLayer: h.kv[`${arch}.block_count`],
    nEmbd: h.kv[`${arch}.embedding_length`],
    nVocab: Array.isArray(tokens) ? tokens.length : undefined,
    bos: h.kv['tokenizer.ggml.bos_token_id'],
    eos: h.kv['tokenizer.ggml.eos_token_id'],
    tokenTypes: h.kv['tokenizer.ggml.token_type'],
    fileBytes: h.fileSize,
    ...decodeWeightBytes(h),
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  for (const f of process.argv.slice(2)) {
    const { tokenTypes, ...d } = describeModel(f);
    console.log(f, d);
  }
}
