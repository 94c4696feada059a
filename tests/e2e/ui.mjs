// ferry's UI in real headless Chromium: log in, watch the dashboard, upload a file and see its
// transfer and MD5 check, try the terminal when the server has one.
//
//   node tests/e2e/ui.mjs http://127.0.0.1:PORT TOKEN [--expect-tcp] [--expect-legacy]
//
// CHROMIUM picks the browser (default /usr/bin/chromium); FERRY_SCREENSHOTS the directory for
// screenshots (default docs/screenshots). Prints one line per check and exits non-zero on failure.
import { chromium } from 'playwright-core';
import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const [base, token, ...flags] = process.argv.slice(2);
if (!base || !token) {
  console.error('usage: node ui.mjs HTTP_URL TOKEN [--expect-tcp] [--expect-legacy]');
  process.exit(2);
}
const here = path.dirname(fileURLToPath(import.meta.url));
const shots = process.env.FERRY_SCREENSHOTS || path.join(here, '..', '..', 'docs', 'screenshots');
mkdirSync(shots, { recursive: true });

let passed = 0;
let skipped = 0;
async function step(name, f) {
  const t0 = Date.now();
  await f();
  passed++;
  console.log(`ok - ${name} (${Date.now() - t0} ms)`);
}
function skip(name, why) {
  skipped++;
  console.log(`skip - ${name}: ${why}`);
}
function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

/**
 * The terminal client against an in-browser stand-in for /term/ws that speaks the described
 * protocol (session and exit messages, binary terminal bytes, resume with ?session=ID&seq=N).
 * It checks the client's side of the protocol while the server has no terminal.
 */
async function mockTerminal(context, page) {
  const output = []; // every byte the "shell" sent, in order, for resumes
  const seen = { resumes: [], resizes: 0 };
  let line = '';
  await context.route('**/term/ws', (route) => route.fulfill({ status: 400, body: 'upgrade required' }));
  await context.routeWebSocket(/\/term\/ws/, (ws) => {
    const url = new URL(ws.url());
    const emit = (text) => { const b = Buffer.from(text); output.push(...b); ws.send(b); };
    if (url.searchParams.get('session') === 'mock-1') {
      const seq = Number(url.searchParams.get('seq'));
      seen.resumes.push(seq);
      ws.send(JSON.stringify({ type: 'session', id: 'mock-1' }));
      if (seq < output.length) ws.send(Buffer.from(output.slice(seq)));
    } else {
      ws.send(JSON.stringify({ type: 'session', id: 'mock-1' }));
      emit('mock$ ');
    }
    ws.onMessage((m) => {
      if (typeof m === 'string') {
        if (JSON.parse(m).type === 'resize') seen.resizes++;
        return;
      }
      for (const ch of m.toString()) {
        if (ch === '\r') {
          const out = line === 'echo hi' ? 'hi\r\n' : '';
          line = '';
          emit(`\r\n${out}mock$ `);
        } else {
          line += ch;
          emit(ch);
        }
      }
    });
  });
  const screen = () => page.locator('#term .xterm-rows').innerText();
  await step('terminal client (mock /term/ws): echo hi, resize, resume after a reload', async () => {
    await page.reload();
    await page.locator('#term .xterm-rows').waitFor();
    await page.locator('#term').click();
    await page.keyboard.type('echo hi\n');
    await page.waitForFunction(() => /^hi\s*$/m.test(document.querySelector('#term .xterm-rows')?.innerText || ''));
    check(seen.resizes > 0, 'the client sent its size');
    const shown = await page.evaluate(() => [sessionStorage.getItem('ferry.term.session'), Number(sessionStorage.getItem('ferry.term.seq'))]);
    check(shown[0] === 'mock-1' && shown[1] === output.length, `stored session and seq: ${shown}, sent ${output.length}`);
    await page.reload();
    await page.locator('#term .xterm-rows').waitFor();
    await page.waitForFunction(() => /^hi\s*$/m.test(document.querySelector('#term .xterm-rows')?.innerText || ''));
    check(seen.resumes.length === 1 && seen.resumes[0] === 0, `resumed from seq 0 on a fresh page: ${seen.resumes}`);
    const text = await screen();
    check(text.includes('mock$ echo hi'), `replayed screen: ${text}`);
  });
  await context.unrouteAll({ behavior: 'ignoreErrors' });
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage'],
});
let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  context.setDefaultTimeout(20000);
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));

  await step('an anonymous visit to / lands on the login form', async () => {
    await page.goto(`${base}/`);
    check(new URL(page.url()).pathname === '/login', `at ${page.url()}`);
    await page.locator('#token').waitFor();
  });

  await step('a wrong token is refused', async () => {
    await page.fill('#token', 'not-the-token');
    await page.click('button[type=submit]');
    await page.locator('#failed').waitFor({ state: 'visible' });
  });

  await step('logging in with the token opens the dashboard', async () => {
    await page.fill('#token', token);
    await Promise.all([page.waitForURL(`${base}/`), page.click('button[type=submit]')]);
    const cookies = await context.cookies();
    const c = cookies.find((k) => k.name === 'ferry_session');
    check(c && c.httpOnly && c.sameSite === 'Strict', 'an HttpOnly, SameSite=Strict cookie');
    check(c.value !== token && c.value.length >= 32, 'the cookie is not the token');
    await page.locator('#live.on').waitFor();
    await page.locator('#sessions tr.session[data-transport="http"]').first().waitFor();
    if (flags.includes('--expect-tcp')) {
      await page.locator('#sessions tr.session[data-transport="tcp"]').first().waitFor();
    }
    if (flags.includes('--expect-legacy')) {
      await page.locator('#sessions tr.session[data-transport="legacy"]').first().waitFor();
    }
  });

  await step('the API takes the cookie, and nothing less', async () => {
    const [without, withCookie] = await page.evaluate(async () => {
      const a = await fetch('/api/v1/files', { credentials: 'omit' });
      const b = await fetch('/api/v1/files');
      return [a.status, b.status];
    });
    check(without === 401, `without the cookie: ${without}`);
    check(withCookie === 200, `with the cookie: ${withCookie}`);
  });

  const content = Buffer.from(`hello from the browser test ${Date.now()}\n`.repeat(2000));
  const md5 = createHash('md5').update(content).digest('hex');
  await step('an upload in the Files tab is verified by MD5', async () => {
    await page.click('[data-tab="files"]');
    await page.locator('#listing').waitFor();
    await page.setInputFiles('#upload-input', { name: 'hello.txt', mimeType: 'text/plain', buffer: content });
    const row = page.locator('.upload.done[data-path="hello.txt"]');
    await row.waitFor();
    const text = await row.innerText();
    check(text.includes('MD5 match') && text.includes(md5), `upload row: ${text}`);
    await page.locator('#listing tr.entry[data-name="hello.txt"]').waitFor();
    const listed = await page.locator('#listing tr.entry[data-name="hello.txt"]').innerText();
    check(listed.includes(md5), `listing shows the MD5: ${listed}`);
  });

  await step('the dashboard shows the transfer and its MD5 check', async () => {
    await page.click('[data-tab="dashboard"]');
    await page.locator('#transfers tr.transfer[data-path="hello.txt"][data-state="verified"]').waitFor();
    await page.locator('#checks tr.check[data-path="hello.txt"][data-result="ok"]').waitFor();
    const check_row = await page.locator('#checks tr.check[data-path="hello.txt"]').first().innerText();
    check(check_row.includes(md5), `check row: ${check_row}`);
    await page.screenshot({ path: path.join(shots, 'dashboard.png') });
  });

  await step('a download link serves the file', async () => {
    const got = await page.evaluate(async () => {
      const r = await fetch('/files/hello.txt');
      return [r.status, r.headers.get('x-checksum-md5')];
    });
    check(got[0] === 200 && got[1] === md5, `download: ${got}`);
  });

  const termStatus = await page.evaluate(async () => (await fetch('/term/ws')).status);
  await page.click('[data-tab="terminal"]');
  if (termStatus === 404) {
    await step('the terminal tab says there is no terminal', async () => {
      await page.locator('#term-unavailable').waitFor();
      await page.screenshot({ path: path.join(shots, 'terminal.png') });
    });
    skip('terminal: echo hi', 'the server has no /term/ws');
    skip('terminal: the shell survives a reload', 'the server has no /term/ws');
    await mockTerminal(context, page);
  } else {
    const screenText = () => page.locator('#term .xterm-rows').innerText();
    const waitScreen = (re) => page.waitForFunction(
      (src) => new RegExp(src, 'm').test(document.querySelector('#term .xterm-rows')?.innerText || ''),
      re.source, { timeout: 20000 });
    let pid;
    await step('the terminal runs echo hi', async () => {
      await page.locator('#term .xterm-rows').waitFor();
      await page.locator('#term').click();
      await page.keyboard.type('echo hi\n');
      await waitScreen(/^hi\s*$/);
      await page.keyboard.type('echo pid=$$\n');
      await waitScreen(/^pid=\d+\s*$/);
      pid = (await screenText()).match(/^pid=(\d+)\s*$/m)[1];
      await page.screenshot({ path: path.join(shots, 'terminal.png') });
    });
    await step('the shell survives a reload', async () => {
      await page.reload();
      await page.locator('#term .xterm-rows').waitFor();
      await page.locator('#term').click();
      await page.keyboard.type('echo again=$$\n');
      await waitScreen(/^again=\d+\s*$/);
      const again = (await screenText()).match(/^again=(\d+)\s*$/m)[1];
      check(again === pid, `same shell after reload: ${pid} then ${again}`);
    });
    await step('a flood of output is paced by the page and gets through', async () => {
      // 3 MB is six ack windows: it only finishes if the page acknowledges what it drew.
      await page.keyboard.type('yes flood | head -c 3000000 > /dev/tty; echo flood-$((6*7))\n');
      await page.waitForFunction(
        () => /^flood-42\s*$/m.test(document.querySelector('#term .xterm-rows')?.innerText || ''),
        null, { timeout: 60000 });
      const t0 = Date.now();
      await page.evaluate(() => 1);
      check(Date.now() - t0 < 2000, 'the tab answers right after the flood');
    });
  }

  await step('the Recordings tab loads', async () => {
    await page.click('[data-tab="recordings"]');
    await page.locator('#recordings :is(ul, p, .notice)').first().waitFor();
  });

  const recStatus = await page.evaluate(async () => (await fetch('/api/v1/recordings')).status);
  if (recStatus === 404) {
    skip('recordings: the server lists its own', 'the server has no /api/v1/recordings');
    // The player against a stand-in recording: its timing, with a long pause cut short.
    const cast = [
      JSON.stringify({ version: 2, width: 60, height: 8, timestamp: 1764100000 }),
      JSON.stringify([0.1, 'o', 'mock$ echo one\r\none\r\n']),
      JSON.stringify([0.2, 'i', 'ignored input']),
      JSON.stringify([60.0, 'o', 'mock$ echo two\r\ntwo\r\n']),
    ].join('\n') + '\n';
    await context.route('**/api/v1/recordings', (r) => r.fulfill({ json: { recordings: [{ id: 'demo', started_at: Date.now() }] } }));
    await context.route('**/api/v1/recordings/demo', (r) => r.fulfill({ body: cast, contentType: 'application/x-asciicast' }));
    await step('recordings player (stand-in list): replays a cast, skipping a long pause', async () => {
      await page.reload();
      await page.locator('#recordings a').first().click();
      const t0 = Date.now();
      await page.waitForFunction(() => /^two\s*$/m.test(document.querySelector('#player .xterm-rows')?.innerText || ''), null, { timeout: 10000 });
      check(Date.now() - t0 < 8000, 'the 60 s pause was cut short');
      const text = await page.locator('#player .xterm-rows').innerText();
      check(/^one\s*$/m.test(text) && !text.includes('ignored'), `player screen: ${text}`);
    });
    await context.unrouteAll({ behavior: 'ignoreErrors' });
  }

  await step('at phone width the UI still fits', async () => {
    await page.setViewportSize({ width: 390, height: 800 });
    await page.click('[data-tab="dashboard"]');
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    check(overflow <= 1, `horizontal overflow of ${overflow}px`);
    await page.setViewportSize({ width: 1280, height: 800 });
  });

  await step('logging out ends the cookie login', async () => {
    await Promise.all([page.waitForURL(`${base}/login`), page.click('.logout button')]);
    const status = await page.evaluate(async () => (await fetch('/api/v1/sessions')).status);
    check(status === 401, `after logout the API answered ${status}`);
    await page.goto(`${base}/`);
    check(new URL(page.url()).pathname === '/login', 'back at the login form');
  });

  check(errors.length === 0, `no script errors: ${errors.join('; ')}`);
} catch (e) {
  failed = true;
  console.log(`not ok - ${e.message}`);
} finally {
  await browser.close();
}
console.log(`e2e: ${passed} passed, ${failed ? 1 : 0} failed, ${skipped} skipped`);
process.exit(failed ? 1 : 0);
