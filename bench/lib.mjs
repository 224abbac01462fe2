// Shared by the browser benchmarks (compare, profile, hub-load): the repository root, the CLI,
// command-line flags, Chromium's flags and `glimpse serve` on a free port.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
/** The release CLI when it is built (faster checkpoints), else the debug one. */
export const BIN = existsSync(join(ROOT, 'target/release/glimpse')) ? join(ROOT, 'target/release/glimpse') : join(ROOT, 'target/debug/glimpse');
/** Headless Chromium without WebGPU, and with SwiftShader's WebGPU (../shared/ENVIRONMENT.md). */
export const FLAGS = ['--no-sandbox', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];
export const WEBGPU = [...FLAGS, '--enable-unsafe-webgpu', '--use-webgpu-adapter=swiftshader', '--enable-features=Vulkan'];

/** `--name value` from the command line, or `dflt`. */
export function arg(name, dflt) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : dflt;
}

/** `glimpse serve` of the repository on a free port: {child, base}. */
export function serve() {
  return new Promise((res, rej) => {
    const child = spawn(BIN, ['serve', '--port', '0', '--root', ROOT], { stdio: ['ignore', 'pipe', 'inherit'] });
    child.stdout.on('data', (d) => {
      const m = String(d).match(/serving (http:\/\/127\.0\.0\.1:\d+)\//);
      if (m) res({ child, base: m[1] });
    });
    child.on('exit', (c) => rej(new Error(`glimpse serve exited ${c}`)));
  });
}
