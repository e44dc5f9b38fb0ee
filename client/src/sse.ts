/**
 * A Server-Sent Events parser for a fetch-based stream (the WHATWG "event stream interpretation").
 *
 * Why these lines instead of `eventsource-parser`: the package stays dependency-free, so its built
 * file loads in a browser as a plain `<script type="module">` with no bundler and no import map.
 * The format is small: lines end in CR, LF or CRLF (possibly split across chunks); `field: value`
 * with one optional space; `data` lines join with "\n"; a blank line dispatches; a line starting
 * with ":" is a comment (the server's keep-alive). test/client-sse.test.ts covers each rule.
 */

export interface SseEvent {
  /** `message` when the event had no `event:` field. */
  event: string;
  data: string;
  id?: string;
}

export interface SseHandlers {
  onEvent(event: SseEvent): void;
  /** A `retry:` field: the server's reconnection delay in milliseconds. */
  onRetry?(ms: number): void;
}

export class SseParser {
  private buffer = '';
  /** The previous chunk ended in CR: a LF at the start of the next one belongs to it. */
  private pendingCr = false;
  private data: string[] = [];
  private eventType = '';
  private lastEventId: string | undefined;
  private readonly decoder = new TextDecoder();

  constructor(private readonly handlers: SseHandlers) {}

  /** Feeds raw bytes as they arrive. */
  pushBytes(bytes: Uint8Array): void {
    this.push(this.decoder.decode(bytes, { stream: true }));
  }

  /** Feeds decoded text as it arrives. */
  push(text: string): void {
    let chunk = text;
    if (this.pendingCr && chunk.startsWith('\n')) chunk = chunk.slice(1);
    this.pendingCr = false;
    this.buffer += chunk;
    let start = 0;
    for (;;) {
      const cr = this.buffer.indexOf('\r', start);
      const lf = this.buffer.indexOf('\n', start);
      if (cr === -1 && lf === -1) break;
      const end = cr === -1 ? lf : lf === -1 ? cr : Math.min(cr, lf);
      this.line(this.buffer.slice(start, end));
      if (end === cr && this.buffer[end + 1] === '\n') {
        start = end + 2;
      } else {
        if (end === cr && end === this.buffer.length - 1) this.pendingCr = true;
        start = end + 1;
      }
    }
    this.buffer = this.buffer.slice(start);
  }

  private line(line: string): void {
    if (line === '') {
      this.dispatch();
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    switch (field) {
      case 'data':
        this.data.push(value);
        break;
      case 'event':
        this.eventType = value;
        break;
      case 'id':
        if (!value.includes('\0')) this.lastEventId = value;
        break;
      case 'retry':
        if (/^\d+$/.test(value)) this.handlers.onRetry?.(Number(value));
        break;
      default:
        // Unknown fields are ignored, as the specification says.
        break;
    }
  }

  private dispatch(): void {
    const type = this.eventType || 'message';
    this.eventType = '';
    if (this.data.length === 0) return;
    const event: SseEvent = { event: type, data: this.data.join('\n') };
    if (this.lastEventId !== undefined) event.id = this.lastEventId;
    this.data = [];
    this.handlers.onEvent(event);
  }
}
