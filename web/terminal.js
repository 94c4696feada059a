// The browser terminal: xterm.js on /term/ws, resumable across reloads.
//
// Protocol: binary frames carry terminal bytes both ways; text frames are JSON:
// {"type":"session","id"} and {"type":"exit","code"} from the server, {"type":"resize","cols","rows"}
// to it. The session id and the count of output bytes received (seq) live in sessionStorage. A
// reconnect within the page resumes with /term/ws?session=ID&seq=N, N the bytes already shown; a
// reloaded page has an empty screen, so it resumes the same shell with seq=0 to have the server
// repaint what it still holds. Seq counts are the server's byte offsets: the session message
// says where its output starts, and a {"type":"lost","to"} message skips ahead.
//
// Flow control: after xterm.js has drawn output, the page acknowledges it with
// {"type":"ack","seq":N}; the server runs at most 512 KiB ahead of the last ack and stops
// reading the shell meanwhile, so `yes` or a big `cat` cannot flood the tab.
import { el } from './lib.js';

const KEY_ID = 'ferry.term.session';
const KEY_SEQ = 'ferry.term.seq';

/** Whether this server has a terminal for this login: 404 means none, 403 a role without one. */
export async function terminalAvailable() {
  try {
    const r = await fetch('/term/ws', { credentials: 'same-origin' });
    if (r.status === 403) return 'forbidden';
    return r.status !== 404;
  } catch {
    return false;
  }
}

/** A terminal in `container`, with status lines in `status`; returns {fit, term}. */
export async function openTerminal(container, status) {
  const available = await terminalAvailable();
  if (available === 'forbidden') {
    container.replaceChildren(el('div', { class: 'notice', id: 'term-unavailable' },
      el('strong', {}, 'No terminal for this login. '),
      'Opening a terminal needs a token with the exec role (and a shell its role may run).'));
    container.classList.add('unavailable');
    status.textContent = 'not allowed';
    return null;
  }
  if (!available) {
    container.replaceChildren(el('div', { class: 'notice', id: 'term-unavailable' },
      el('strong', {}, 'No terminal on this server. '),
      'This ferry build does not offer /term/ws (the endpoint answered 404).'));
    container.classList.add('unavailable');
    status.textContent = 'unavailable';
    return null;
  }
  const term = new Terminal({
    cursorBlink: true,
    fontFamily: 'ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace',
    fontSize: 14,
    scrollback: 5000,
    theme: { background: '#0f1419', foreground: '#e6e1cf' },
  });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(container);
  const enc = new TextEncoder();
  let ws = null;
  let exited = false;
  let failures = 0;
  let seq = 0;
  let shown = 0;
  let acked = 0;
  const ACK_EVERY = 64 * 1024;
  const send = (data) => { if (ws && ws.readyState === WebSocket.OPEN) ws.send(data); };
  const sendSize = () => send(JSON.stringify({ type: 'resize', cols: term.cols, rows: term.rows }));
  term.onData((d) => send(enc.encode(d)));
  term.onBinary((d) => send(Uint8Array.from(d, (c) => c.charCodeAt(0))));
  term.onResize(sendSize);

  function connect() {
    const id = sessionStorage.getItem(KEY_ID);
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const query = id ? `?session=${encodeURIComponent(id)}&seq=${seq}` : '';
    ws = new WebSocket(`${proto}//${location.host}/term/ws${query}`);
    ws.binaryType = 'arraybuffer';
    let opened = false;
    ws.onopen = () => { opened = true; failures = 0; status.textContent = 'connected'; safeFit(); sendSize(); };
    ws.onmessage = (e) => {
      if (typeof e.data === 'string') {
        let msg;
        try { msg = JSON.parse(e.data); } catch { return; }
        if (msg.type === 'session') {
          if (typeof msg.seq === 'number') seq = msg.seq;
          else if (msg.id !== sessionStorage.getItem(KEY_ID)) seq = 0;
          shown = acked = seq;
          sessionStorage.setItem(KEY_SEQ, String(seq));
          sessionStorage.setItem(KEY_ID, msg.id);
          status.textContent = `session ${msg.id}`;
        } else if (msg.type === 'lost' && typeof msg.to === 'number') {
          seq = shown = msg.to;
          term.write('\r\n\x1b[2m[some earlier output is no longer held]\x1b[0m\r\n');
        } else if (msg.type === 'exit') {
          exited = true;
          sessionStorage.removeItem(KEY_ID);
          sessionStorage.removeItem(KEY_SEQ);
          term.write(`\r\n\x1b[2m[process exited with code ${msg.code}]\x1b[0m\r\n`);
          status.textContent = `exited (${msg.code})`;
        }
        return;
      }
      const bytes = new Uint8Array(e.data);
      const socket = ws;
      term.write(bytes, () => {
        // Drawn: tell the server, in steps, so it sends more.
        shown += bytes.byteLength;
        if (shown - acked >= ACK_EVERY && socket === ws) {
          acked = shown;
          send(JSON.stringify({ type: 'ack', seq: shown }));
        }
      });
      seq += bytes.byteLength;
      sessionStorage.setItem(KEY_SEQ, String(seq));
    };
    ws.onclose = () => {
      if (exited) return;
      failures += 1;
      // A resume the server refuses at once (the shell is gone): start a fresh one.
      if (!opened && failures >= 2) {
        sessionStorage.removeItem(KEY_ID);
        sessionStorage.removeItem(KEY_SEQ);
        seq = 0;
      }
      status.textContent = 'disconnected; reconnecting…';
      setTimeout(connect, Math.min(5000, 300 * failures));
    };
  }
  function safeFit() {
    try { fit.fit(); } catch { /* hidden: fits when shown */ }
  }
  window.addEventListener('resize', safeFit);
  connect();
  term.focus();
  return { term, fit: safeFit, restart() { exited = false; seq = 0; sessionStorage.removeItem(KEY_ID); sessionStorage.removeItem(KEY_SEQ); term.reset(); connect(); } };
}
