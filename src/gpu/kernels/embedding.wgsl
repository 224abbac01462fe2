// Row gather: out[r, :] = table[ids[r] - row_start, :] for an f32 or f16 (WDTYPE 1) table
// [V, D]. A table split across buffers is gathered once per chunk (skip_outside = 1): each
// chunk writes only the rows it holds. An id past the whole table yields a zero row (ids come
// from our tokenizer or argmax, both inside it).

struct Params {
    vocab: u32,
    dim: u32,
    numel: u32,
    row_pitch: u32,
    row_start: u32,
    skip_outside: u32,
    vocab_total: u32,
    last_chunk: u32,
}

override WG_X: u32 = 256u;
override WG_Y: u32 = 1u;
override WDTYPE: u32 = 0u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read> table: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG_X, WG_Y)
fn embedding(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x + gid.y * p.row_pitch;
    if (i >= p.numel) {
        return;
    }
    let id = ids[i / p.dim];
    if (id >= p.vocab_total) {
        if (p.last_chunk == 1u) {
            out[i] = 0.0;
        }
        return;
    }
    if (id < p.row_start || id - p.row_start >= p.vocab) {
        if (p.skip_outside == 0u) {
            out[i] = 0.0;
        }
        return;
    }
    let e = (id - p.row_start) * p.dim + i % p.dim;
    if (WDTYPE == 1u) {
        let w = unpack2x16float(table[e >> 1u]);
        out[i] = select(w.x, w.y, (e & 1u) == 1u);
    } else {
        out[i] = bitcast<f32>(table[e]);
    }
}
