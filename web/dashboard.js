// The dashboard: sessions, transfers and MD5 checks, live from /api/v1/events.
import { el, fmtBytes, fmtTime } from './lib.js';

const sessions = new Map();
const transfers = new Map();
let checks = [];
let root;

/** Builds the dashboard in `section` and starts the event stream. */
export function mountDashboard(section) {
  root = section;
  section.append(
    el('div', { class: 'grid' },
      el('article', { class: 'card', id: 'sessions-card' },
        el('h2', {}, 'Sessions ', el('span', { class: 'count', id: 'session-count' }, '0')),
        el('div', { id: 'sessions', class: 'scroll' })),
      el('article', { class: 'card wide', id: 'transfers-card' },
        el('h2', {}, 'Transfers'),
        el('div', { id: 'transfers', class: 'scroll' })),
      el('article', { class: 'card wide', id: 'checks-card' },
        el('h2', {}, 'MD5 checks'),
        el('div', { id: 'checks', class: 'scroll' }))));
  connect();
}

function connect() {
  const live = document.getElementById('live');
  const es = new EventSource('/api/v1/events');
  es.addEventListener('open', () => { live.textContent = 'live'; live.className = 'live on'; });
  es.addEventListener('error', () => {
    live.textContent = 'reconnecting…'; live.className = 'live off';
    // A logged-out browser gets 401 and EventSource gives up: check and go to the login.
    if (es.readyState === EventSource.CLOSED) {
      fetch('/api/v1/sessions').then((r) => {
        if (r.status === 401) location.href = '/login';
        else setTimeout(connect, 2000);
      }).catch(() => setTimeout(connect, 2000));
    }
  });
  const on = (name, f) => es.addEventListener(name, (e) => { f(JSON.parse(e.data)); render(); });
  on('snapshot', (d) => {
    sessions.clear(); transfers.clear();
    for (const s of d.sessions) sessions.set(s.id, s);
    for (const t of d.transfers) transfers.set(t.id, t);
    checks = d.checks;
  });
  on('session_started', (s) => sessions.set(s.id, s));
  on('session_ended', (s) => sessions.delete(s.id));
  on('transfer', (t) => transfers.set(t.id, t));
  on('progress', (d) => { for (const t of d.transfers) transfers.set(t.id, t); });
  on('check', (c) => { checks = [c, ...checks].slice(0, 200); });
  on('lagged', () => { es.close(); connect(); });
}

function table(head, rows, empty) {
  if (rows.length === 0) return el('p', { class: 'muted' }, empty);
  return el('table', {},
    el('thead', {}, el('tr', {}, head.map((h) => el('th', {}, h)))),
    el('tbody', {}, rows));
}

function render() {
  if (!root) return;
  document.getElementById('session-count').textContent = sessions.size;
  const ss = [...sessions.values()].sort((a, b) => b.started_at - a.started_at);
  document.getElementById('sessions').replaceChildren(table(
    ['Transport', 'User', 'Peer', 'In', 'Out', 'Since', 'Doing'],
    ss.map((s) => el('tr', { class: 'session', 'data-transport': s.transport },
      el('td', {}, el('span', { class: `badge t-${s.transport}` }, s.transport)),
      el('td', { title: s.role || '' }, s.user || ''),
      el('td', { class: 'mono' }, s.peer),
      el('td', {}, fmtBytes(s.bytes_in)),
      el('td', {}, fmtBytes(s.bytes_out)),
      el('td', {}, fmtTime(s.started_at)),
      el('td', { class: 'mono ellipsis' }, s.current || ''))),
    'No live sessions.'));
  const ts = [...transfers.values()].sort((a, b) => b.started_at - a.started_at).slice(0, 100);
  document.getElementById('transfers').replaceChildren(table(
    ['Path', 'Dir', 'Transport', 'Progress', 'Rate', 'State'],
    ts.map((t) => {
      const pct = t.bytes_total > 0 ? Math.min(100, (100 * t.bytes_done) / t.bytes_total) : (t.state === 'in_progress' ? 0 : 100);
      return el('tr', { class: 'transfer', 'data-path': t.path, 'data-state': t.state },
        el('td', { class: 'mono ellipsis', title: t.path }, t.path),
        el('td', {}, t.direction === 'put' ? '↑ put' : '↓ get'),
        el('td', {}, el('span', { class: `badge t-${t.transport}` }, t.transport)),
        el('td', { class: 'progress-cell' },
          el('progress', { max: '100', value: String(pct) }),
          el('span', { class: 'small' }, `${fmtBytes(t.bytes_done)} / ${fmtBytes(t.bytes_total)}`)),
        el('td', {}, `${fmtBytes(t.rate)}/s`),
        el('td', {}, el('span', { class: `badge s-${t.state}` }, t.state.replace('_', ' '))));
    }),
    'No transfers yet.'));
  document.getElementById('checks').replaceChildren(table(
    ['Result', 'Path', 'Dir', 'Transport', 'MD5', 'When'],
    checks.slice(0, 100).map((c) => el('tr', { class: 'check', 'data-path': c.path, 'data-result': c.result },
      el('td', {}, el('span', { class: `badge ${c.result === 'ok' ? 'ok' : 'bad'}` }, c.result)),
      el('td', { class: 'mono ellipsis', title: c.path }, c.path),
      el('td', {}, c.direction),
      el('td', {}, c.transport),
      // A mismatch shows both sides; a match shows the one MD5 both sides agree on.
      el('td', { class: 'mono small', title: `expected ${c.expected}, found ${c.actual || 'nothing'}` },
        c.result === 'ok' ? c.expected
          : el('span', { class: 'error' }, `${c.expected} ≠ ${c.actual || '?'}`)),
      el('td', {}, fmtTime(c.at)))),
    'No checks yet.'));
}
