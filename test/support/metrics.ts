/**
 * The value of one series in Prometheus text format. Throws when the series is absent or its
 * value is not a number, so a renamed or missing metric fails the test instead of reading as NaN.
 */
export function metricValue(metrics: string, series: string): number {
  const line = metrics.split('\n').find((l) => l.startsWith(`${series} `));
  if (line === undefined) throw new Error(`no series ${series} in the metrics`);
  const value = Number(line.slice(series.length + 1));
  if (Number.isNaN(value)) throw new Error(`series ${series} has no numeric value: ${line}`);
  return value;
}
