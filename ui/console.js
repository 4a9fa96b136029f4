// The commitd operator console: plain ES modules (preact + htm for the views, uPlot for the
// charts), served by commitd itself from the installed packages. No build step.
import { h, render } from 'preact';
import { useCallback, useEffect, useRef, useState } from 'preact/hooks';
import htm from 'htm';
import uPlot from 'uplot';

const html = htm.bind(h);
const PAGE_SIZE = 20;
const STATES = ['active', 'committing', 'failed', 'committed', 'abandoned'];

/** The server answered 401: the login cookie is gone or its token no longer valid. */
class NeedsToken extends Error {}

/** A problem+json answer, kept whole so the view can show its detail. */
class Problem extends Error {
  constructor(status, problem) {
    super(problem?.detail ?? `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function api(method, path, body) {
  // The console's header lets the API take the login cookie (a cross-site page cannot send it).
  const headers = { accept: 'application/json', 'x-commitd-console': '1' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  const json = text ? JSON.parse(text) : undefined;
  if (response.status === 401) throw new NeedsToken(json?.detail ?? 'a token is needed');
  if (!response.ok) throw new Problem(response.status, json);
  return json;
}

/** Loads `load()` and reloads it when `deps` change; errors other than 401 are shown, 401 asks for a token. */
function useLoad(load, deps, onNeedsToken) {
  const [state, setState] = useState({ loading: true });
  const reload = useCallback(() => {
    setState((s) => ({ ...s, loading: true }));
    load().then(
      (value) => setState({ value }),
      (error) => {
        if (error instanceof NeedsToken) onNeedsToken();
        setState({ error });
      },
    );
  }, deps);
  useEffect(reload, [reload]);
  return [state, reload];
}

function ProblemBox({ error }) {
  if (!error || error instanceof NeedsToken) return null;
  const p = error.problem;
  return html`<div class="problem" role="alert"><strong>${p?.title ?? 'Error'}</strong> ${p?.code ? html`<code>${p.code}</code>` : ''}<div>${error.message}</div></div>`;
}

function StateBadge({ state }) {
  return html`<span class=${`state state-${state}`}>${state}</span>`;
}

const when = (iso) => (iso ? new Date(iso).toLocaleString() : '');

/** The cursor of the next page, as the listing answers it. */
const nextCursor = (page) => page?.next ?? page?.cursor ?? page?.nextCursor;

function SessionList({ onOpen, onNeedsToken }) {
  const [state, setState] = useState('failed');
  const [cursors, setCursors] = useState([undefined]);
  const cursor = cursors[cursors.length - 1];
  const [page] = useLoad(
    () => api('GET', `/v1/sessions?state=${state}&limit=${PAGE_SIZE}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`),
    [state, cursor],
    onNeedsToken,
  );
  const [search, setSearch] = useState('');
  const choose = (next) => {
    setState(next);
    setCursors([undefined]);
  };
  const sessions = page.value?.sessions ?? [];
  const more = nextCursor(page.value);
  return html`<section aria-label="Sessions">
    <div class="toolbar">
      <label>State <select aria-label="State" value=${state} onChange=${(e) => choose(e.target.value)}>
        ${STATES.map((s) => html`<option value=${s}>${s}</option>`)}
      </select></label>
      <form onSubmit=${(e) => (e.preventDefault(), search && onOpen(search))}>
        <input aria-label="Search by key" placeholder="key" value=${search} onInput=${(e) => setSearch(e.target.value)} />
        <button class="action secondary" type="submit">Open</button>
      </form>
    </div>
    <${ProblemBox} error=${page.error} />
    <table>
      <thead><tr><th>key</th><th>state</th><th>stores</th><th>owner</th><th>when</th><th>detail</th></tr></thead>
      <tbody>
        ${sessions.map(
          (s) => html`<tr data-key=${s.key}>
            <td class="key"><a onClick=${() => onOpen(s.key)}>${s.key}</a></td>
            <td><${StateBadge} state=${s.state} /></td>
            <td>${Array.isArray(s.stores) ? s.stores.join(', ') : Object.keys(s.stores ?? {}).join(', ')}</td>
            <td>${s.owner ?? s.abandonedBy ?? ''}</td>
            <td>${when(s.committedAt ?? s.abandonedAt ?? s.startedAt)}</td>
            <td class="muted">${s.error ?? ''}</td>
          </tr>`,
        )}
        ${sessions.length === 0 && !page.loading ? html`<tr><td colspan="6" class="muted">No ${state} sessions.</td></tr>` : ''}
      </tbody>
    </table>
    <div class="toolbar" style="margin-top:0.6rem">
      <button class="action secondary" disabled=${cursors.length === 1} onClick=${() => setCursors(cursors.slice(0, -1))}>Previous</button>
      <button class="action secondary" disabled=${!more} onClick=${() => setCursors([...cursors, more])}>Next</button>
    </div>
  </section>`;
}

function SessionPage({ sessionKey, onBack, onNeedsToken }) {
  const path = `/v1/sessions/${encodeURIComponent(sessionKey)}`;
  const [session, reload] = useLoad(() => api('GET', path), [sessionKey], onNeedsToken);
  const [log] = useLoad(
    () => api('GET', `${path}/log`).catch((e) => (e instanceof Problem && e.status === 404 ? undefined : Promise.reject(e))),
    [sessionKey, session.value?.state],
    onNeedsToken,
  );
  const [outcome, setOutcome] = useState();
  const resolve = async (action) => {
    setOutcome(undefined);
    try {
      const answer = await api('POST', `${path}/resolve`, { action });
      setOutcome({ notice: `${action}: the session is now ${answer.state}` });
    } catch (error) {
      if (error instanceof NeedsToken) onNeedsToken();
      setOutcome({ error });
    }
    reload();
  };
  const s = session.value;
  const ids = s && !Array.isArray(s.stores) ? s.stores : undefined;
  const names = s ? (Array.isArray(s.stores) ? s.stores : Object.keys(s.stores ?? {})) : [];
  return html`<section aria-label="Session">
    <div class="toolbar"><button class="action secondary" onClick=${onBack}>← Sessions</button><h2 style="margin:0">Session <code>${sessionKey}</code></h2></div>
    <${ProblemBox} error=${session.error} />
    ${outcome?.notice ? html`<div class="notice" role="status">${outcome.notice}</div>` : ''}
    <${ProblemBox} error=${outcome?.error} />
    ${s &&
    html`<dl>
        <dt>state</dt><dd><${StateBadge} state=${s.state} /></dd>
        ${s.sessionId ? html`<dt>session ID</dt><dd><code>${s.sessionId}</code></dd>` : ''}
        ${s.owner ? html`<dt>owner</dt><dd>${s.owner}</dd>` : ''}
        ${s.error ? html`<dt>error</dt><dd>${s.error}</dd>` : ''}
      </dl>
      ${s.state === 'failed'
        ? html`<div class="toolbar" style="margin-top:0.8rem">
            <button class="action" onClick=${() => resolve('retry')}>Retry</button>
            <button class="action danger" onClick=${() => resolve('abandon')}>Abandon</button>
          </div>`
        : ''}
      <h2>Stores</h2>
      <table><thead><tr><th>store</th><th>store ID</th></tr></thead>
        <tbody>${names.map((n) => html`<tr><td>${n}</td><td><code>${ids?.[n] ?? ''}</code></td></tr>`)}</tbody>
      </table>
      <h2>History</h2>
      <table><tbody>
        ${s.startedAt ? html`<tr><td>started</td><td>${when(s.startedAt)}</td></tr>` : ''}
        ${s.committedAt ? html`<tr><td>committed</td><td>${when(s.committedAt)}</td></tr>` : ''}
        ${s.abandonedAt ? html`<tr><td>abandoned by ${s.abandonedBy ?? '?'}</td><td>${when(s.abandonedAt)}</td></tr>` : ''}
        ${(s.history ?? []).map((e) => html`<tr><td>${e.action} by ${e.by}</td><td>${when(e.at)}</td></tr>`)}
      </tbody></table>
      <h2>Change log</h2>
      ${log.value ? html`<pre aria-label="Change log">${JSON.stringify(log.value.log, null, 2)}</pre>` : html`<p class="muted">commitd keeps no change log for this session (committed, or open on its instance).</p>`}`}
  </section>`;
}

function Stores({ onNeedsToken }) {
  const [stores, reload] = useLoad(() => api('GET', '/v1/stores'), [], onNeedsToken);
  const [outcome, setOutcome] = useState();
  const act = async (run, notice) => {
    setOutcome(undefined);
    try {
      await run();
      setOutcome({ notice });
    } catch (error) {
      if (error instanceof NeedsToken) onNeedsToken();
      setOutcome({ error });
    }
    reload();
  };
  const add = (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    let options;
    try {
      options = JSON.parse(String(form.get('options') || '{}'));
    } catch {
      setOutcome({ error: new Problem(400, { title: 'Options are not JSON', detail: 'write the options as a JSON object' }) });
      return;
    }
    const name = String(form.get('name'));
    act(() => api('POST', '/v1/stores', { name, type: String(form.get('type')), options }), `store ${name} registered`);
  };
  const list = stores.value?.stores ?? [];
  return html`<section aria-label="Stores">
    <${ProblemBox} error=${stores.error} />
    ${outcome?.notice ? html`<div class="notice" role="status">${outcome.notice}</div>` : ''}
    <${ProblemBox} error=${outcome?.error} />
    <table>
      <thead><tr><th>name</th><th>type</th><th>origin</th><th>registered</th><th>options</th><th></th></tr></thead>
      <tbody>${list.map(
        (s) => html`<tr data-store=${s.name}>
          <td>${s.name}</td><td>${s.type}</td><td>${s.origin ?? ''}</td>
          <td>${s.registeredBy ? `${s.registeredBy}, ${when(s.registeredAt)}` : ''}</td>
          <td><code>${s.options ? JSON.stringify(s.options) : ''}</code></td>
          <td>${s.origin === 'config' ? '' : html`<button class="action danger" onClick=${() => act(() => api('DELETE', `/v1/stores/${encodeURIComponent(s.name)}`), `store ${s.name} removed`)}>Remove</button>`}</td>
        </tr>`,
      )}</tbody>
    </table>
    <h2>Add a store</h2>
    <form class="stack" onSubmit=${add} aria-label="Add a store">
      <input name="name" placeholder="name" aria-label="Store name" required />
      <select name="type" aria-label="Store type">${['sqlite', 'postgres', 'mysql', 'redis', 'etcd', 'nats', 'http'].map((t) => html`<option>${t}</option>`)}</select>
      <textarea name="options" rows="3" aria-label="Store options" placeholder='{"path": "orders.db"}'></textarea>
      <button class="action" type="submit">Add store</button>
    </form>
  </section>`;
}

function Instances({ onNeedsToken }) {
  const [instances] = useLoad(() => api('GET', '/v1/instances'), [], onNeedsToken);
  return html`<section aria-label="Instances">
    <${ProblemBox} error=${instances.error} />
    <p class="muted">Each instance holds a lease in the coordinator KV; an instance is listed while its lease is alive.</p>
    <table><thead><tr><th>instance</th><th>pid</th><th>started</th><th></th></tr></thead>
      <tbody>${(instances.value?.instances ?? []).map(
        (i) => html`<tr><td><code>${i.id}</code></td><td>${i.pid}</td><td>${when(i.startedAt)}</td><td>${i.self ? 'this instance' : ''}</td></tr>`,
      )}</tbody>
    </table>
  </section>`;
}

// --- Activity: rates from /metrics (prom-client's JSON), drawn by uPlot -------------------

const POLL_MS = 2000;
const POINTS = 90;
const WINDOW_S = (POINTS * POLL_MS) / 1000;

/** The samples of one metric family as {labels, value, metricName}. */
function samples(metrics, name) {
  return metrics.find((m) => m.name === name)?.values ?? [];
}

function total(metrics, name, metricName = name, match = () => true) {
  return samples(metrics, name)
    .filter((v) => (v.metricName ?? name) === metricName && match(v.labels ?? {}))
    .reduce((sum, v) => sum + v.value, 0);
}

/** A quantile from the difference of two cumulative histogram snapshots (as Prometheus' histogram_quantile). */
function quantile(q, before, after) {
  const buckets = after.map(([le, count], i) => [le, count - (before[i]?.[1] ?? 0)]);
  const count = buckets.at(-1)?.[1] ?? 0;
  if (count <= 0) return null;
  const rank = q * count;
  let lower = 0;
  let below = 0;
  for (const [le, cumulative] of buckets) {
    if (cumulative >= rank) {
      if (!Number.isFinite(le)) return lower;
      return lower + (le - lower) * ((rank - below) / Math.max(cumulative - below, 1e-9));
    }
    lower = le;
    below = cumulative;
  }
  return lower;
}

function histogram(metrics, name) {
  return samples(metrics, name)
    .filter((v) => v.metricName === `${name}_bucket`)
    .map((v) => [v.labels.le === '+Inf' ? Number.POSITIVE_INFINITY : Number(v.labels.le), v.value])
    .sort((a, b) => a[0] - b[0]);
}

function Chart({ title, series, data }) {
  const ref = useRef();
  const plot = useRef();
  useEffect(() => {
    plot.current = new uPlot(
      {
        width: 360,
        height: 200,
        series: [{}, ...series.map((s) => ({ label: s.label, stroke: s.stroke, width: 1.5, spanGaps: true }))],
        axes: [{}, { size: 56 }],
        // The last three minutes, also while there are only one or two points.
        scales: { x: { time: true, range: (_u, _min, max) => [max - WINDOW_S, max] } },
      },
      data,
      ref.current,
    );
    return () => plot.current.destroy();
  }, []);
  useEffect(() => plot.current?.setData(data), [data]);
  // The newest value of each series, for a reader (and the console test) that wants numbers.
  const latest = series.map((s, i) => `${s.label}=${data[i + 1].at(-1) ?? ''}`).join(' ');
  return html`<div class="chart" aria-label=${title} data-latest=${latest} data-points=${data[0].length}><strong>${title}</strong><div ref=${ref}></div></div>`;
}

function Activity({ onNeedsToken }) {
  const [points, setPoints] = useState({ t: [], committed: [], failed: [], p50: [], p99: [], rolled: [], recoveredFailed: [] });
  const [error, setError] = useState();
  const last = useRef();
  useEffect(() => {
    let stopped = false;
    const poll = async () => {
      try {
        const metrics = await api('GET', '/metrics');
        const now = Date.now() / 1000;
        const snapshot = {
          now,
          committed: total(metrics, 'commitd_sessions_committed_total'),
          cancelled: total(metrics, 'commitd_sessions_cancelled_total'),
          recovered: total(metrics, 'commitd_sessions_recovered_total', undefined, (l) => l.outcome === 'committed'),
          recoveredFailed: total(metrics, 'commitd_sessions_recovered_total', undefined, (l) => l.outcome === 'failed'),
          latency: histogram(metrics, 'commitd_commit_duration_seconds'),
        };
        const before = last.current;
        last.current = snapshot;
        setError(undefined);
        if (!before || stopped) return;
        const dt = Math.max(snapshot.now - before.now, 1e-3);
        const rate = (field) => (snapshot[field] - before[field]) / dt;
        const ms = (q) => {
          const seconds = quantile(q, before.latency, snapshot.latency);
          return seconds === null ? null : seconds * 1000;
        };
        setPoints((p) => {
          const push = (list, value) => [...list, value].slice(-POINTS);
          return {
            t: push(p.t, snapshot.now),
            committed: push(p.committed, rate('committed')),
            failed: push(p.failed, rate('cancelled')),
            p50: push(p.p50, ms(0.5)),
            p99: push(p.p99, ms(0.99)),
            rolled: push(p.rolled, rate('recovered')),
            recoveredFailed: push(p.recoveredFailed, rate('recoveredFailed')),
          };
        });
      } catch (e) {
        if (e instanceof NeedsToken) onNeedsToken();
        setError(e);
      }
    };
    poll();
    const timer = setInterval(poll, POLL_MS);
    return () => {
      stopped = true;
      clearInterval(timer);
    };
  }, []);
  return html`<section aria-label="Activity">
    <${ProblemBox} error=${error} />
    <p class="muted">Rates over ${POLL_MS / 1000} s, from this instance's /metrics.</p>
    <div class="charts">
      <${Chart} title="Throughput (sessions/s)" series=${[
        { label: 'committed', stroke: '#2451b7' },
        { label: 'cancelled', stroke: '#b42318' },
      ]} data=${[points.t, points.committed, points.failed]} />
      <${Chart} title="Commit latency (ms)" series=${[
        { label: 'p50', stroke: '#1a7f37' },
        { label: 'p99', stroke: '#9a6700' },
      ]} data=${[points.t, points.p50, points.p99]} />
      <${Chart} title="Recovery (sessions/s)" series=${[
        { label: 'rolled forward', stroke: '#5b3cc4' },
        { label: 'failed', stroke: '#b42318' },
      ]} data=${[points.t, points.rolled, points.recoveredFailed]} />
    </div>
  </section>`;
}

const TABS = [
  ['sessions', 'Sessions'],
  ['stores', 'Stores'],
  ['instances', 'Instances'],
  ['activity', 'Activity'],
];

function App() {
  const [tab, setTab] = useState('sessions');
  const [openKey, setOpenKey] = useState();
  // A 401 means the token behind the login cookie is gone: the page itself asks for a new one.
  const onNeedsToken = useCallback(() => location.assign('/ui'), []);
  const shared = { onNeedsToken };
  let view;
  if (tab === 'sessions' && openKey !== undefined) view = html`<${SessionPage} sessionKey=${openKey} onBack=${() => setOpenKey(undefined)} ...${shared} />`;
  else if (tab === 'sessions') view = html`<${SessionList} onOpen=${setOpenKey} ...${shared} />`;
  else if (tab === 'stores') view = html`<${Stores} ...${shared} />`;
  else if (tab === 'instances') view = html`<${Instances} ...${shared} />`;
  else view = html`<${Activity} ...${shared} />`;
  return html`<header>
      <h1>commitd</h1>
      <nav>${TABS.map(
        ([id, label]) => html`<button aria-current=${tab === id ? 'page' : undefined} onClick=${() => (setTab(id), setOpenKey(undefined))}>${label}</button>`,
      )}</nav>
      <form method="post" action="/ui/logout" class="logout"><button class="action secondary" type="submit">Log out</button></form>
    </header>
    <main>${view}</main>`;
}

render(html`<${App} />`, document.getElementById('console'));
