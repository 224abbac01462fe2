// glimpse widget: one script tag gives a site's images alt text computed in the visitor's
// browser (nothing is uploaded).
//
//   <script type="module" src="https://your.site/glimpse/www/widget.js"></script>
//   <img src="photo.jpg" data-glimpse>                    fills a missing alt
//   <img src="photo.jpg" data-glimpse="caption">          … and shows the caption under the image
//   <glimpse-caption src="photo.jpg"></glimpse-caption>   an image with its caption
//
// Attributes (on the image or the element): data-glimpse-model (catalog id or URL; default
// scenes-git), data-glimpse-device (auto | webgpu | cpu), data-glimpse-max-tokens.
// An image that already has non-empty alt text is left alone. Work starts only when an image
// comes near the viewport; all images share one worker, and a model loads once per page.
// Each image gets data-glimpse-state = pending | running | done | error (with
// data-glimpse-error); the element fires a `glimpse-caption` event with {text}.

import * as glimpse from './glimpse.js';

const models = new Map(); // "model|device" -> Promise<Model>

function modelFor(el) {
  const name = el.dataset.glimpseModel || glimpse.DEFAULT_MODEL;
  const device = el.dataset.glimpseDevice || 'auto';
  const key = `${name}|${device}`;
  if (!models.has(key)) {
    const p = glimpse.load(name, { device });
    p.catch(() => models.delete(key)); // a failed load may be retried by the next image
    models.set(key, p);
  }
  return models.get(key);
}

/** The image's bytes as the page loaded them (same origin, or CORS-enabled). */
async function bytesOf(img) {
  if (!img.complete) await img.decode().catch(() => {});
  const src = img.currentSrc || img.src;
  if (!src) throw new Error('the image has no src');
  const res = await fetch(src);
  if (!res.ok) throw new Error(`HTTP ${res.status} for ${src}`);
  return new Uint8Array(await res.arrayBuffer());
}

const hasAlt = (img) => (img.getAttribute('alt') ?? '').trim() !== '';

async function describe(img, host = img) {
  host.dataset.glimpseState = 'running';
  try {
    const model = await modelFor(host);
    const max = Number(host.dataset.glimpseMaxTokens) || undefined;
    const bytes = await bytesOf(img);
    let out;
    try {
      out = await model.caption(bytes, max ? { maxNewTokens: max } : {});
    } finally {
      // the encoded image is not needed after its caption: the worker releases it now
      model.forget(bytes).catch(() => {});
    }
    if (!hasAlt(img)) img.alt = out.text;
    if (host !== img || img.dataset.glimpse === 'caption') showCaption(img, host, out.text);
    host.dataset.glimpseState = 'done';
    host.dispatchEvent(new CustomEvent('glimpse-caption', { detail: { text: out.text }, bubbles: true }));
  } catch (e) {
    host.dataset.glimpseState = 'error';
    host.dataset.glimpseError = e instanceof Error ? e.message : String(e);
  }
}

function showCaption(img, host, text) {
  let cap = host === img ? img.nextElementSibling : host.querySelector('.glimpse-caption-text');
  if (!cap || !cap.classList.contains('glimpse-caption-text')) {
    cap = document.createElement('span');
    cap.className = 'glimpse-caption-text';
    img.after(cap);
  }
  cap.textContent = text;
}

const observer = new IntersectionObserver((entries) => {
  for (const e of entries) {
    if (!e.isIntersecting) continue;
    observer.unobserve(e.target);
    const host = e.target;
    const img = host instanceof HTMLImageElement ? host : host.querySelector('img');
    if (img) describe(img, host);
  }
}, { rootMargin: '200px' });

function watch(el) {
  if (el.dataset.glimpseState) return;
  if (el instanceof HTMLImageElement && hasAlt(el) && el.dataset.glimpse !== 'caption') {
    el.dataset.glimpseState = 'skipped'; // it has alt text already
    return;
  }
  el.dataset.glimpseState = 'pending';
  observer.observe(el);
}

class GlimpseCaption extends HTMLElement {
  connectedCallback() {
    if (!this.querySelector('img')) {
      const img = document.createElement('img');
      img.src = this.getAttribute('src') ?? '';
      if (this.hasAttribute('alt')) img.alt = this.getAttribute('alt');
      this.append(img);
    }
    watch(this);
  }
}
if (!customElements.get('glimpse-caption')) customElements.define('glimpse-caption', GlimpseCaption);

function scan(root) {
  for (const img of root.querySelectorAll?.('img[data-glimpse]') ?? []) watch(img);
}
scan(document);
new MutationObserver((records) => {
  for (const r of records) for (const n of r.addedNodes) if (n.nodeType === 1) {
    if (n.matches('img[data-glimpse]')) watch(n);
    scan(n);
  }
}).observe(document.documentElement, { childList: true, subtree: true });
