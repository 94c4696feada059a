// Small helpers shared by the UI's tabs.

/** Creates an element: el('div', {class: 'x', onclick: f}, child, 'text', ...). */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

/** Bytes as B, KiB, MiB, GiB. */
export function fmtBytes(n) {
  if (n === undefined || n === null) return '?';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

/** A unix-ms time as local HH:MM:SS (and the date when not today). */
export function fmtTime(ms) {
  if (!ms) return '';
  const d = new Date(ms);
  const today = new Date().toDateString() === d.toDateString();
  const time = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
  return today ? time : `${d.toLocaleDateString()} ${time}`;
}

/** A path under the root as a /files/ URL, each segment percent-encoded. */
export function fileUrl(path) {
  return '/files/' + path.split('/').filter(Boolean).map(encodeURIComponent).join('/');
}

/** Sends to ferry's API with the login cookie; `X-Ferry: 1` passes the server's CSRF rule. */
export async function api(method, url, body) {
  const headers = { 'X-Ferry': '1' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(url, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.status === 401) { location.href = '/login'; throw new Error('logged out'); }
  if (!resp.ok) {
    let msg = `${resp.status}`;
    try { msg = (await resp.json()).error.message; } catch { /* not JSON */ }
    throw new Error(msg);
  }
  const type = resp.headers.get('content-type') || '';
  return type.startsWith('application/json') ? resp.json() : resp;
}
