/** A Server-Sent Events reader for the tests: fetch, parse the stream, wait for events. */

export interface SseEvent {
  event: string;
  data: string;
}

export class SseStream {
  readonly events: SseEvent[] = [];
  readonly comments: string[] = [];
  readonly retries: number[] = [];
  /** Resolves when the server ends the stream (or the connection breaks). */
  readonly ended: Promise<void>;
  private read = 0;
  private readonly waiters = new Set<() => void>();
  private finished = false;

  private constructor(
    readonly response: Response,
    private readonly abort: AbortController,
  ) {
    this.ended = this.pump();
  }

  /** Opens `url`; resolves once the status and headers are in. */
  static async open(url: string, headers: Record<string, string> = {}): Promise<SseStream> {
    const abort = new AbortController();
    const response = await fetch(url, {
      headers: { accept: 'text/event-stream', ...headers },
      signal: abort.signal,
    });
    return new SseStream(response, abort);
  }

  get isEnded(): boolean {
    return this.finished;
  }

  private async pump(): Promise<void> {
    const decoder = new TextDecoder();
    let buffer = '';
    try {
      if (!this.response.body) return;
      for await (const chunk of this.response.body) {
        buffer += decoder.decode(chunk as Uint8Array, { stream: true });
        let end: number;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          this.parseBlock(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch {
      // aborted by close(), or the connection broke: either way the stream is over
    } finally {
      this.finished = true;
      this.notify();
    }
  }

  private parseBlock(block: string): void {
    let event = 'message';
    const data: string[] = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) this.comments.push(line.slice(1).trim());
      else if (line.startsWith('event: ')) event = line.slice(7);
      else if (line.startsWith('data: ')) data.push(line.slice(6));
      else if (line.startsWith('retry: ')) this.retries.push(Number(line.slice(7)));
    }
    if (data.length > 0) this.events.push({ event, data: data.join('\n') });
    this.notify();
  }

  private notify(): void {
    for (const wake of this.waiters) wake();
  }

  /** Waits until `check` is true (re-checked on every block received), or fails after `ms`. */
  async until(check: () => boolean, what: string, ms = 10_000): Promise<void> {
    const deadline = Date.now() + ms;
    while (!check()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const wake = () => {
          this.waiters.delete(wake);
          clearTimeout(timer);
          resolve();
        };
        const timer = setTimeout(wake, 100);
        this.waiters.add(wake);
      });
    }
  }

  /** The next event not yet returned, parsed as JSON. */
  async next<T = unknown>(ms = 10_000): Promise<{ event: string; data: T }> {
    await this.until(() => this.events.length > this.read || this.finished, 'an event', ms);
    const next = this.events[this.read];
    if (!next) throw new Error('the stream ended before the next event');
    this.read += 1;
    return { event: next.event, data: JSON.parse(next.data) as T };
  }

  /** Events received and not yet returned by next(). */
  get unread(): SseEvent[] {
    return this.events.slice(this.read);
  }

  close(): void {
    this.abort.abort();
  }
}
