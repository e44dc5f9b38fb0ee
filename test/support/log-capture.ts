import { Writable } from 'node:stream';
import { createLogger } from '../../lib/infra/logger.ts';

/** A logger whose every line is kept, raw and parsed as `Line`. */
export function captureLog<Line>(level = 'info') {
  const raw: string[] = [];
  const lines: Line[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) {
        raw.push(line);
        lines.push(JSON.parse(line) as Line);
      }
      done();
    },
  });
  return { raw, lines, logger: createLogger('pulse-api', level, sink) };
}
