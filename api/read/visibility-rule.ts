/**
 * Whether the operator's visibility rule (pulse_visible_users, docs/security.md) exists, read from
 * the catalog at most once per `refreshMs` and awaited when older: a rule installed or dropped
 * takes effect within that time, and nothing is ever answered on a guess before the first read.
 */
import { visibilityRuleInstalled, type Executor } from '../../lib/store/pulse-store.ts';

export interface VisibilityRule {
  /** True while the rule exists; a read at most `refreshMs` old. */
  current(): Promise<boolean>;
}

export class LiveVisibilityRule implements VisibilityRule {
  private value: boolean | undefined;
  private readAt = -Infinity;
  private reading: Promise<boolean> | undefined;

  constructor(
    private readonly db: Executor,
    private readonly refreshMs = 1_000,
  ) {}

  current(): Promise<boolean> {
    if (this.value !== undefined && performance.now() - this.readAt < this.refreshMs) {
      return Promise.resolve(this.value);
    }
    this.reading ??= visibilityRuleInstalled(this.db)
      .then((installed) => {
        this.value = installed;
        this.readAt = performance.now();
        return installed;
      })
      .finally(() => (this.reading = undefined));
    return this.reading;
  }
}

/** No rule: everyone sees everyone (tests and tools that build parts by hand). */
export const NO_VISIBILITY_RULE: VisibilityRule = { current: () => Promise.resolve(false) };
