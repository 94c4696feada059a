// The file browser: directories, downloads with their MD5, verified uploads, deletes.
import { api, el, fileUrl, fmtBytes, fmtTime } from './lib.js';

let cwd = '';
let listing;
let uploads;

/** Builds the Files tab in `section`. */
export function mountFiles(section) {
  const picker = el('input', { type: 'file', id: 'upload-input', multiple: true, onchange: (e) => {
    for (const f of e.target.files) upload(f);
    e.target.value = '';
  } });
  section.append(
    el('article', { class: 'card' },
      el('div', { class: 'toolbar' },
        el('nav', { id: 'crumbs', class: 'crumbs' }),
        el('span', { class: 'spacer' }),
        el('label', { class: 'button', for: 'upload-input' }, 'Upload…'), picker,
        el('button', { onclick: () => load(cwd) }, 'Refresh')),
      uploads = el('div', { id: 'uploads' }),
      listing = el('div', { id: 'listing', class: 'scroll' })));
  section.addEventListener('dragover', (e) => { e.preventDefault(); section.classList.add('drop'); });
  section.addEventListener('dragleave', () => section.classList.remove('drop'));
  section.addEventListener('drop', (e) => {
    e.preventDefault(); section.classList.remove('drop');
    for (const f of e.dataTransfer.files) upload(f);
  });
}

/** Shows the Files tab (reloads the current directory). */
export function showFiles() { load(cwd); }

function join(dir, name) { return dir ? `${dir}/${name}` : name; }

async function load(dir) {
  cwd = dir;
  const crumbs = document.getElementById('crumbs');
  const parts = dir.split('/').filter(Boolean);
  crumbs.replaceChildren(
    el('a', { href: '#files', onclick: (e) => { e.preventDefault(); load(''); } }, 'root'),
    ...parts.map((p, i) => [' / ', el('a', { href: '#files', onclick: (e) => {
      e.preventDefault(); load(parts.slice(0, i + 1).join('/'));
    } }, p)]));
  let data;
  try {
    data = await api('GET', `/api/v1/files?path=${encodeURIComponent(dir)}`);
  } catch (e) {
    listing.replaceChildren(el('p', { class: 'error' }, `Cannot list ${dir || 'the root'}: ${e.message}`));
    return;
  }
  const rows = data.entries.map((e) => {
    const path = join(dir, e.name);
    const isDir = e.kind === 'dir';
    const name = isDir
      ? el('a', { href: '#files', class: 'dir', onclick: (ev) => { ev.preventDefault(); load(path); } }, `${e.name}/`)
      : el('a', { href: fileUrl(path), download: e.name, class: 'file' }, e.name);
    return el('tr', { class: 'entry', 'data-name': e.name },
      el('td', { class: 'ellipsis' }, name),
      el('td', {}, isDir ? '' : fmtBytes(e.size)),
      el('td', { class: 'hide-narrow' }, fmtTime(e.mtime)),
      el('td', { class: 'mono small hide-narrow' }, e.md5 || ''),
      el('td', {}, el('button', { class: 'danger small', title: `delete ${path}`, onclick: () => remove(path, isDir) }, 'Delete')));
  });
  listing.replaceChildren(rows.length === 0 ? el('p', { class: 'muted' }, 'Empty directory.')
    : el('table', {},
      el('thead', {}, el('tr', {}, ['Name', 'Size', 'Modified', 'MD5', ''].map((h, i) => el('th', { class: i >= 2 && i <= 3 ? 'hide-narrow' : null }, h)))),
      el('tbody', {}, rows)));
}

async function remove(path, isDir) {
  if (!confirm(`Delete ${path}${isDir ? ' (an empty directory)' : ''}?`)) return;
  try { await api('DELETE', fileUrl(path)); } catch (e) { alert(`Delete failed: ${e.message}`); }
  load(cwd);
}

/** The MD5 hex of a File, read in slices; `onprogress(done, total)` as it goes. */
async function md5Of(file, onprogress) {
  const spark = new SparkMD5.ArrayBuffer();
  const step = 4 << 20;
  for (let off = 0; off < file.size; off += step) {
    spark.append(await file.slice(off, off + step).arrayBuffer());
    onprogress(Math.min(off + step, file.size), file.size);
  }
  return spark.end();
}

async function upload(file) {
  const path = join(cwd, file.name);
  const bar = el('progress', { max: '100', value: '0' });
  const status = el('span', { class: 'small' }, 'hashing…');
  const row = el('div', { class: 'upload', 'data-path': path }, el('span', { class: 'mono ellipsis' }, path), bar, status);
  uploads.append(row);
  const md5 = await md5Of(file, (d, t) => { bar.value = t ? (100 * d) / t : 100; });
  status.textContent = `uploading (MD5 ${md5})`;
  bar.value = 0;
  const xhr = new XMLHttpRequest();
  xhr.open('PUT', fileUrl(path));
  xhr.setRequestHeader('X-Ferry', '1');
  xhr.setRequestHeader('X-Checksum-Md5', md5);
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total;
    status.textContent = `${fmtBytes(e.loaded)} / ${fmtBytes(file.size)}`;
  };
  xhr.onload = () => {
    if (xhr.status >= 200 && xhr.status < 300) {
      const server = (xhr.getResponseHeader('X-Checksum-Md5') || '').toLowerCase();
      const ok = server === md5;
      bar.value = 100;
      row.classList.add(ok ? 'done' : 'failed');
      status.replaceChildren(
        el('span', { class: `badge ${ok ? 'ok' : 'bad'}` }, ok ? 'MD5 match' : 'MD5 differs'),
        ` local ${md5}, server ${server || '(none)'}`);
    } else {
      let msg = `${xhr.status}`;
      try { msg = JSON.parse(xhr.responseText).error.message; } catch { /* not JSON */ }
      row.classList.add('failed');
      status.replaceChildren(el('span', { class: 'badge bad' }, 'failed'), ` ${msg}`);
    }
    load(cwd);
  };
  xhr.onerror = () => {
    row.classList.add('failed');
    status.replaceChildren(el('span', { class: 'badge bad' }, 'failed'), ' connection lost');
  };
  xhr.send(file);
}
