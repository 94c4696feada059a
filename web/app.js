// The UI's entry: tabs by URL hash, each mounted once when first shown.
import { mountDashboard } from './dashboard.js';
import { mountFiles, showFiles } from './files.js';
import { mountRecordings, showRecordings } from './recordings.js';
import { openTerminal } from './terminal.js';
import { el } from './lib.js';

let terminal = null;

const tabs = {
  dashboard: { mount: mountDashboard },
  files: { mount: mountFiles, show: showFiles },
  terminal: {
    mount(section) {
      const status = el('span', { id: 'term-status', class: 'muted' }, 'connecting…');
      const box = el('div', { id: 'term', class: 'term-box' });
      section.append(el('article', { class: 'card' },
        el('div', { class: 'toolbar' }, el('h2', {}, 'Terminal'), status, el('span', { class: 'spacer' }),
          el('a', { href: '/term', target: '_blank', class: 'button' }, 'Full window'),
          el('button', { onclick: () => terminal && terminal.restart() }, 'New shell')),
        box));
      openTerminal(box, status).then((t) => { terminal = t; });
    },
    show() { if (terminal) { terminal.fit(); terminal.term.focus(); } },
  },
  recordings: { mount: mountRecordings, show: showRecordings },
};
const mounted = new Set();

function route() {
  const name = location.hash.slice(1) in tabs ? location.hash.slice(1) : 'dashboard';
  for (const t of Object.keys(tabs)) {
    document.getElementById(`tab-${t}`).hidden = t !== name;
    document.querySelector(`[data-tab="${t}"]`).classList.toggle('active', t === name);
  }
  const section = document.getElementById(`tab-${name}`);
  if (!mounted.has(name)) { mounted.add(name); tabs[name].mount(section); }
  if (tabs[name].show) tabs[name].show();
}

window.addEventListener('hashchange', route);
// The dashboard's event stream also drives the header's live badge: start it at once.
if (!mounted.has('dashboard')) { mounted.add('dashboard'); mountDashboard(document.getElementById('tab-dashboard')); }
route();
