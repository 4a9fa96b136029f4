/**
 * The benchmark's picture: sessions/s and p99 latency against sessions in flight, commitd
 * beside its floor (and the baseline code, when measured), one column per pass. A
 * vega-lite spec compiled and rendered to SVG by vega, headless, without a canvas.
 * @module
 */
import * as vega from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';

/** One measured point of one series. */
export interface ChartPoint {
  readonly pass: string;
  readonly concurrency: number;
  /** `commitd`, `floor`, `baseline`, … */
  readonly series: string;
  readonly sessionsPerSecond: number;
  readonly p99Ms: number;
}

export async function chartSvg(points: readonly ChartPoint[], title: string): Promise<string> {
  const values = points.flatMap((point) => [
    { pass: point.pass, concurrency: point.concurrency, series: point.series, metric: 'sessions/s', value: point.sessionsPerSecond },
    { pass: point.pass, concurrency: point.concurrency, series: point.series, metric: 'p99 latency (ms)', value: point.p99Ms },
  ]);
  const passes = [...new Set(points.map((point) => point.pass))];
  const spec: TopLevelSpec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    title: { text: title, anchor: 'start' },
    data: { values },
    facet: {
      row: { field: 'metric', type: 'nominal', title: null, sort: ['sessions/s', 'p99 latency (ms)'] },
      column: { field: 'pass', type: 'nominal', title: null, sort: passes },
    },
    spec: {
      width: 170,
      height: 150,
      layer: [
        {
          mark: { type: 'line', point: true },
          encoding: {
            x: { field: 'concurrency', type: 'ordinal', title: 'sessions in flight', axis: { labelAngle: 0 } },
            y: { field: 'value', type: 'quantitative', title: null },
            color: { field: 'series', type: 'nominal', title: null, sort: ['commitd', 'floor', 'baseline'] },
            strokeDash: { field: 'series', type: 'nominal', legend: null, sort: ['commitd', 'floor', 'baseline'] },
          },
        },
      ],
    },
    resolve: { scale: { y: 'independent' } },
    config: { font: 'sans-serif', legend: { orient: 'bottom' } },
  };
  const view = new vega.View(vega.parse(compile(spec).spec), { renderer: 'none' });
  const svg = await view.toSVG();
  view.finalize();
  return svg;
}
