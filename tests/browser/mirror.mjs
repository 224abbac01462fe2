// A local mirror of catalog repos at their real shapes: for a catalog entry, out/hub-mirror/<id>/
// holds the files the entry lists — the repo's real metadata (tests/hub/configs: verbatim or
// reconstructed; tests/hub/constructed where the real config.json was not found), the real
// tokenizer vocabulary of its family (tests/hub/tokenizers), and a checkpoint with seeded random
// weights written by `glimpse checkpoint` in the format the entry lists (pytorch_model.bin or
// model.safetensors). out/hub-mirror/catalog.json lists these entries with local URLs and exact
// sizes (and the weights' sha256), so the page loads them exactly as it would from the hub.
// Used by the browser tests (hub.test.mjs) and bench/hub-load.mjs. Nothing here is committed.

import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, createReadStream, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const HUB = (root) => join(root, 'tests/hub');

/** The family vocabulary files of a repo (real ones, from tests/hub/tokenizers). */
function vocabOf(repo) {
  if (repo.includes('vit-gpt2')) return { 'vocab.json': 'gpt2/vocab.json', 'merges.txt': 'gpt2/merges.txt' };
  if (repo.includes('clip')) return { 'vocab.json': 'clip/vocab.json', 'merges.txt': 'clip/merges.txt' };
  return { 'vocab.txt': 'bert-base-uncased/vocab.txt' };
}

function sha256File(path) {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(path).on('data', (d) => h.update(d)).on('end', () => resolve(h.digest('hex'))).on('error', reject);
  });
}

/**
 * Builds out/hub-mirror/<id> for each catalog id (skipping weights already written with the same
 * seed and layer count) and writes out/hub-mirror/catalog.json. `layers` cuts layer counts
 * (null: the real depth). Returns {catalogPath, entries}.
 */
export async function buildMirror({ root, bin, ids, seed = 7, layers = null, scale = 0.05 }) {
  // a layer-cut mirror lives beside the full one: <id>-l<N>/ and catalog-l<N>.json
  const suffix = layers === null ? '' : `-l${layers}`;
  const catalog = JSON.parse(readFileSync(join(root, 'models/catalog.json'), 'utf8'));
  const inventory = JSON.parse(readFileSync(join(HUB(root), 'inventory.json'), 'utf8'));
  const out = join(root, 'out/hub-mirror');
  mkdirSync(out, { recursive: true });
  const entries = [];
  for (const id of ids) {
    const entry = catalog.models.find((m) => m.id === id);
    if (!entry?.repo) throw new Error(`catalog has no hub entry ${id}`);
    const dir = inventory[entry.repo].dir;
    const dest = join(out, `${id}${suffix}`);
    mkdirSync(dest, { recursive: true });
    // the metadata the entry lists: verbatim, else reconstructed, else constructed
    const sources = [join(HUB(root), 'configs', dir), join(HUB(root), 'configs', dir, '_reconstructed'), join(HUB(root), 'constructed', dir)];
    const vocab = vocabOf(entry.repo);
    const weights = entry.files.find((f) => /\.(bin|safetensors)$/.test(f.name));
    for (const f of entry.files) {
      if (f === weights) continue;
      const from = vocab[f.name] ? join(HUB(root), 'tokenizers', vocab[f.name]) : sources.map((s) => join(s, f.name)).find(existsSync);
      if (!from) {
        // a small file of the repo that was never recovered (e.g. vit-gpt2's tokenizer_config.json)
        continue;
      }
      copyFileSync(from, join(dest, f.name));
    }
    // a cut mirror's config says its cut depth (as `glimpse checkpoint --layers` writes it), also
    // when the weights are kept from an earlier run
    if (layers !== null) {
      const path = join(dest, 'config.json');
      writeFileSync(path, JSON.stringify(cutLayers(JSON.parse(readFileSync(path, 'utf8')), layers), null, 2));
    }
    const stamp = join(dest, '.weights.json');
    const want = JSON.stringify({ seed, layers, scale, format: weights.name });
    if (!existsSync(stamp) || readFileSync(stamp, 'utf8') !== want || !existsSync(join(dest, weights.name))) {
      const args = ['checkpoint', '--config', join(dest, 'config.json'), '--out', dest, '--seed', String(seed), '--scale', String(scale),
        '--format', weights.name.endsWith('.bin') ? 'bin' : 'safetensors'];
      if (layers !== null) args.push('--layers', String(layers));
      execFileSync(bin, args, { stdio: ['ignore', 'pipe', 'inherit'] });
      writeFileSync(stamp, want);
    }
    const files = [];
    for (const f of entry.files) {
      const path = join(dest, f.name);
      if (!existsSync(path)) continue;
      const bytes = statSync(path).size;
      const local = { name: f.name, url: `${id}${suffix}/${f.name}`, bytes };
      if (f === weights) local.sha256 = await sha256File(path);
      files.push(local);
    }
    entries.push({ ...entry, files, note: `local mirror of ${entry.repo} at its real shape${layers ? ` (${layers} layer per tower)` : ''}, random weights (seed ${seed})` });
  }
  const catalogPath = join(out, `catalog${suffix}.json`);
  writeFileSync(catalogPath, JSON.stringify({ version: 1, default: ids[0], models: entries }, null, 2));
  return { catalogPath, catalogUrl: `/out/hub-mirror/catalog${suffix}.json`, entries, dir: out, modelDir: (id) => join(out, `${id}${suffix}`) };
}

/** Every `num_hidden_layers` / `n_layer` in a config, at most `n` (tests/hub.rs cuts the same). */
function cutLayers(v, n) {
  if (Array.isArray(v)) return v.map((x) => cutLayers(x, n));
  if (v === null || typeof v !== 'object') return v;
  return Object.fromEntries(Object.entries(v).map(([k, x]) => [k,
    (k === 'num_hidden_layers' || k === 'n_layer') && typeof x === 'number' ? Math.min(x, n) : cutLayers(x, n)]));
}
