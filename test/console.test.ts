/**
 * The operator console at /ui, in a real browser: Debian's Chromium driven by
 * playwright-core. A commitd process commits sessions; one is failed on purpose (commitd dies
 * at its commit point and another writer takes the row it inserts); the console lists it,
 * shows its change log, and — once the conflict is gone — retries it to a single commit.
 * With COMMITD_SCREENSHOTS=<dir> the test also writes the screenshots docs/console.md shows.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { chromium, type Browser, type Page } from 'playwright-core';
import { makeTempDir, removeTempDir } from './harness/child.ts';
import { requireBinary, skipUnlessFound } from './harness/require.ts';
import { startProcess, type ProcessService, type ProcessServiceOptions } from './support/process.ts';
import { countRows, sqliteRows, sqliteRun } from './support/rows.ts';
import { sqliteStores } from './support/service.ts';

const chromiumPath = requireBinary('/usr/bin/chromium', 'CHROMIUM');
const screenshots = process.env.COMMITD_SCREENSHOTS;

function changesFor(key: string, id: number) {
  return {
    ledger: [{ sql: 'INSERT INTO t(k, n) VALUES (?, ?)', params: [key, id] }],
    orders: [{ sql: 'INSERT INTO p(id, note) VALUES (?, ?)', params: [id, key] }],
  };
}

describe('operator console in Chromium', { skip: skipUnlessFound({ chromium: chromiumPath }) }, () => {
  const dir = makeTempDir('console');
  const stores = sqliteStores(dir, ['ledger', 'orders']);
  const [ledgerPath, ordersPath] = stores.map((s) => (s.options as { path: string }).path) as [string, string];
  // With a token, as an operator runs it: the console asks for it once, on its login page.
  const token = `console-${randomUUID()}`;
  const options: ProcessServiceOptions = { dir, stores, token };
  let service: ProcessService | undefined;
  let browser: Browser | undefined;
  let page: Page;

  async function shot(name: string): Promise<void> {
    if (!screenshots) return;
    mkdirSync(screenshots, { recursive: true });
    await page.screenshot({ path: path.join(screenshots, `${name}.png`), fullPage: true });
  }

  /** Opens the console, logging in first when the browser holds no cookie yet. */
  async function openConsole(): Promise<void> {
    const answer = await page.goto(`${service?.url}/ui`);
    if (answer?.status() === 401) {
      await page.getByLabel('Bearer token').fill(token);
      await page.getByRole('button', { name: 'Open the console' }).click();
    }
    await page.locator('header h1').waitFor();
  }

  before(async () => {
    mkdirSync(dir, { recursive: true });
    sqliteRun(ledgerPath, 'CREATE TABLE t(k TEXT, n INTEGER)');
    sqliteRun(ordersPath, 'CREATE TABLE p(id INTEGER PRIMARY KEY, note TEXT)');
    // A session that fails on purpose: commitd dies at its commit point, then an intruder
    // takes the primary key it inserts, so the restarted commitd's roll-forward is rejected.
    const doomed = await startProcess(options, 'commit.afterIntent=crash');
    await assert.rejects(doomed.request('POST', '/v1/commits', { key: 'order-doomed', changes: changesFor('order-doomed', 99) }));
    assert.equal((await doomed.process.waitForExit(20_000)).signal, 'SIGKILL');
    sqliteRun(ordersPath, 'INSERT INTO p(id, note) VALUES (?, ?)', 99, 'intruder');

    service = await startProcess(options);
    for (let n = 1; n <= 3; n++) {
      const answer = await service.request('POST', '/v1/commits', { key: `order-${n}`, changes: changesFor(`order-${n}`, n) });
      assert.equal(answer.status, 200, JSON.stringify(answer.body));
    }
    assert.equal((await service.request('GET', '/v1/sessions/order-doomed')).body.state, 'failed');

    browser = await chromium.launch({
      executablePath: chromiumPath,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
    const blocked: string[] = [];
    // Every asset comes from commitd: a request anywhere else fails the test.
    await page.route('**/*', (route) => {
      const url = route.request().url();
      if (url.startsWith(service?.url ?? '\0')) return route.continue();
      blocked.push(url);
      return route.abort();
    });
    page.on('pageerror', (error) => assert.fail(`the console threw: ${error.message}`));
    after(() => assert.deepEqual(blocked, [], 'the console loads nothing from outside commitd'));
  });

  after(async () => {
    await browser?.close();
    await service?.process.kill('SIGKILL');
    await removeTempDir(dir);
  });

  it('asks for the token once, on a login page, and refuses a wrong one', async () => {
    assert.ok(service);
    const answer = await page.goto(`${service.url}/ui`);
    assert.equal(answer?.status(), 401, 'no console without a token');
    assert.equal(await page.locator('#console').count(), 0, 'the login page shows nothing of the console');
    await page.getByLabel('Bearer token').fill('not-the-token');
    await page.getByRole('button', { name: 'Open the console' }).click();
    await page.getByRole('alert').filter({ hasText: 'not valid' }).waitFor();
    await shot('login');
    await page.getByLabel('Bearer token').fill(token);
    await page.getByRole('button', { name: 'Open the console' }).click();
    await page.locator('header h1').waitFor();
    const cookie = (await page.context().cookies()).find((c) => c.name === 'commitd_console');
    assert.ok(cookie?.httpOnly && cookie.sameSite === 'Strict', 'the token is kept in an HttpOnly, SameSite=Strict cookie');
    // The cookie alone does not open the API: a cross-site page cannot add the console's header.
    const bare = await page.evaluate(async () => (await fetch('/v1/stores')).status);
    assert.equal(bare, 401);
  });

  it('lists the failed session, shows its change log, and retries it to one commit', async () => {
    assert.ok(service);
    await openConsole();
    const row = page.locator('tr[data-key="order-doomed"]');
    await row.waitFor();
    assert.match((await row.textContent()) ?? '', /failed/);
    await shot('sessions-failed');

    await row.locator('a').click();
    await page.getByRole('heading', { name: /Session order-doomed/ }).waitFor();
    const log = page.getByLabel('Change log');
    assert.match((await log.textContent()) ?? '', /INSERT INTO p\(id, note\)/, 'the change log is shown');
    assert.match((await page.locator('dl').textContent()) ?? '', /UNIQUE|PRIMARY KEY|constraint/i, 'the error says what the store rejected');

    // Retry while the conflict stands: still failed, and the console says why.
    await page.getByRole('button', { name: 'Retry' }).click();
    await page.getByRole('alert').waitFor();
    await shot('session-failed');

    sqliteRun(ordersPath, 'DELETE FROM p WHERE id = 99');
    await page.getByRole('button', { name: 'Retry' }).click();
    await page.getByRole('status').filter({ hasText: 'committed' }).waitFor();
    await page.locator('.state-committed').first().waitFor();
    assert.deepEqual(sqliteRows(ordersPath, 'SELECT note FROM p WHERE id = 99'), [{ note: 'order-doomed' }], 'the retried session committed its row');
    assert.equal(countRows(ledgerPath, 'order-doomed'), 1, 'once');
    await shot('session-committed');
  });

  it('lists committed sessions', async () => {
    assert.ok(service);
    await openConsole();
    await page.getByLabel('State').selectOption('committed');
    for (const key of ['order-1', 'order-2', 'order-3', 'order-doomed']) await page.locator(`tr[data-key="${key}"]`).waitFor();
  });

  it('shows the stores, the instances and live activity', async () => {
    assert.ok(service);
    await openConsole();
    await page.getByRole('button', { name: 'Stores' }).click();
    await page.locator('tr[data-store="orders"]').waitFor();
    await shot('stores');
    await page.getByRole('button', { name: 'Instances' }).click();
    await page.getByText('this instance').waitFor();
    await page.getByRole('button', { name: 'Activity' }).click();
    assert.equal(await page.locator('.chart').count(), 3);
    const throughput = page.getByLabel('Throughput (sessions/s)');
    await throughput.locator('canvas').waitFor();
    // Commits made while the charts poll show up as a rate above zero.
    const committedRate = async () => Number(/committed=([\d.e-]*)/.exec((await throughput.getAttribute('data-latest')) ?? '')?.[1] || 0);
    const deadline = Date.now() + 60_000;
    for (let n = 10; (await committedRate()) === 0; n++) {
      assert.ok(Date.now() < deadline, 'the throughput chart shows the commits');
      await service.request('POST', '/v1/commits', { key: `order-${n}`, changes: changesFor(`order-${n}`, n) });
    }
    if (screenshots) {
      // A few points more, so that the picture shows lines.
      const points = async () => Number((await throughput.getAttribute('data-points')) ?? 0);
      for (let n = 1000; (await points()) < 8; n++) {
        assert.ok(Date.now() < deadline + 60_000, 'the charts keep polling');
        await service.request('POST', '/v1/commits', { key: `order-${n}`, changes: changesFor(`order-${n}`, n) });
      }
      await shot('activity');
    }
  });
});
