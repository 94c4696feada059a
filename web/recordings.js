// Recordings: the terminal sessions recorded as asciicast v2, replayed with their timing.
import { el, fmtBytes, fmtTime } from './lib.js';

/** Longest pause replayed, in seconds (longer idle stretches are cut to this). */
const MAX_PAUSE = 1.5;

let list;
let screen;
let info;
let player = null;

/** Builds the Recordings tab in `section`. */
export function mountRecordings(section) {
  section.append(el('div', { class: 'split' },
    el('article', { class: 'card' },
      el('div', { class: 'toolbar' }, el('h2', {}, 'Recordings'), el('span', { class: 'spacer' }),
        el('button', { onclick: showRecordings }, 'Refresh')),
      list = el('div', { id: 'recordings', class: 'scroll' })),
    el('article', { class: 'card wide' },
      el('div', { class: 'toolbar' },
        info = el('span', { class: 'muted' }, 'Choose a recording to replay.'),
        el('span', { class: 'spacer' }),
        el('button', { onclick: () => player && player.toggle() }, 'Play/Pause'),
        el('select', { id: 'speed', onchange: (e) => player && player.speed(Number(e.target.value)) },
          ['1', '2', '4', '8'].map((s) => el('option', { value: s }, `${s}×`)))),
      screen = el('div', { id: 'player', class: 'player' }))));
}

/** Shows the tab: reloads the list. */
export async function showRecordings() {
  let resp;
  try {
    resp = await fetch('/api/v1/recordings', { credentials: 'same-origin' });
  } catch (e) {
    list.replaceChildren(el('p', { class: 'error' }, e.message));
    return;
  }
  if (resp.status === 404) {
    list.replaceChildren(el('div', { class: 'notice' }, 'No recordings on this server (it has no terminal).'));
    return;
  }
  if (resp.status === 401) { location.href = '/login'; return; }
  if (resp.status === 403) {
    list.replaceChildren(el('div', { class: 'notice' }, 'Recordings are for admin tokens only.'));
    return;
  }
  const data = await resp.json();
  const items = Array.isArray(data) ? data : (data.recordings || []);
  if (items.length === 0) { list.replaceChildren(el('p', { class: 'muted' }, 'No recordings yet.')); return; }
  list.replaceChildren(el('ul', { class: 'plain' }, items.map((r) => {
    const id = typeof r === 'string' ? r : r.id;
    const when = r.started_at || r.timestamp;
    return el('li', {}, el('a', { href: '#recordings', onclick: (e) => { e.preventDefault(); play(id); } },
      el('span', { class: 'mono' }, id),
      when ? el('span', { class: 'small muted' }, ` ${fmtTime(typeof when === 'number' && when < 1e12 ? when * 1000 : when)}`) : '',
      r.size ? el('span', { class: 'small muted' }, ` ${fmtBytes(r.size)}`) : ''));
  })));
}

/** Parses asciicast v2: a header line, then [time, code, data] lines; keeps output events. */
export function parseCast(text) {
  const lines = text.split('\n').filter((l) => l.trim());
  const header = JSON.parse(lines[0]);
  const events = [];
  for (const l of lines.slice(1)) {
    try {
      const [t, code, data] = JSON.parse(l);
      if (code === 'o') events.push([Number(t), data]);
    } catch { /* a torn last line */ }
  }
  return { header, events };
}

async function play(id) {
  if (player) player.stop();
  info.textContent = `loading ${id}…`;
  const resp = await fetch(`/api/v1/recordings/${encodeURIComponent(id)}`, { credentials: 'same-origin' });
  if (!resp.ok) { info.textContent = `cannot load ${id}: ${resp.status}`; return; }
  const { header, events } = parseCast(await resp.text());
  screen.replaceChildren();
  const term = new Terminal({ cols: header.width || 80, rows: header.height || 24, disableStdin: true, fontSize: 13 });
  term.open(screen);
  const limit = Math.min(MAX_PAUSE, header.idle_time_limit || MAX_PAUSE);
  let i = 0;
  let speed = Number(document.getElementById('speed').value) || 1;
  let timer = null;
  let paused = false;
  let prev = 0;
  const total = events.length;
  const step = () => {
    timer = null;
    if (paused) return;
    if (i >= total) { info.textContent = `${id}: done`; return; }
    const [t, data] = events[i++];
    term.write(data);
    prev = t;
    info.textContent = `${id}: ${i}/${total}`;
    if (i < total) {
      const wait = Math.min(limit, Math.max(0, events[i][0] - prev)) / speed;
      timer = setTimeout(step, wait * 1000);
    } else {
      info.textContent = `${id}: done`;
    }
  };
  player = {
    stop() { paused = true; if (timer) clearTimeout(timer); term.dispose(); },
    toggle() { paused = !paused; if (!paused && !timer) step(); },
    speed(s) { speed = s; },
  };
  const first = events.length ? Math.min(limit, events[0][0]) : 0;
  timer = setTimeout(step, (first / speed) * 1000);
}
