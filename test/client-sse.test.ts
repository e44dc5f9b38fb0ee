import { expect } from 'chai';
import { SseParser, type SseEvent } from '../client/src/sse.ts';

function parse(chunks: string[]): { events: SseEvent[]; retries: number[] } {
  const events: SseEvent[] = [];
  const retries: number[] = [];
  const parser = new SseParser({
    onEvent: (event) => events.push(event),
    onRetry: (ms) => retries.push(ms),
  });
  for (const chunk of chunks) parser.push(chunk);
  return { events, retries };
}

/** Every way of cutting `text` in two. */
function splits(text: string): string[][] {
  return Array.from({ length: text.length + 1 }, (_, i) => [text.slice(0, i), text.slice(i)]);
}

describe('client: SSE parser', () => {
  it('reads named events, joins data lines, ignores comments and unknown fields', () => {
    const { events, retries } = parse([
      ': keep-alive\n\nretry: 3000\n\nevent: snapshot\ndata: [1,\ndata: 2]\nfoo: bar\n\n',
      'data:no space\n\n',
    ]);
    expect(retries).to.deep.equal([3000]);
    expect(events).to.deep.equal([
      { event: 'snapshot', data: '[1,\n2]' },
      { event: 'message', data: 'no space' },
    ]);
  });

  it('accepts CRLF, CR and LF line ends, wherever the chunks are cut', () => {
    for (const end of ['\n', '\r', '\r\n']) {
      const text = `event: change${end}data: {"user_id":7}${end}${end}data: x${end}${end}`;
      for (const chunks of splits(text)) {
        const { events } = parse(chunks);
        expect(events, JSON.stringify(chunks)).to.deep.equal([
          { event: 'change', data: '{"user_id":7}' },
          { event: 'message', data: 'x' },
        ]);
      }
    }
  });

  it('decodes UTF-8 split across byte chunks', () => {
    const events: SseEvent[] = [];
    const parser = new SseParser({ onEvent: (e) => events.push(e) });
    const bytes = new TextEncoder().encode('data: café ✓\n\n');
    for (const byte of bytes) parser.pushBytes(Uint8Array.of(byte));
    expect(events).to.deep.equal([{ event: 'message', data: 'café ✓' }]);
  });

  it('dispatches nothing for an event without data, and ignores a bad retry', () => {
    const { events, retries } = parse(['event: snapshot\n\nretry: soon\n\nid: 4\ndata: a\n\n']);
    expect(retries).to.deep.equal([]);
    expect(events).to.deep.equal([{ event: 'message', data: 'a', id: '4' }]);
  });
});
