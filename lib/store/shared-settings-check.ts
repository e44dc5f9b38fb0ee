/**
 * The start-up check that keeps a deployment from contradicting itself. Every Pulse query reads
 * the online threshold live from pulse_settings, so correctness never depends on this check; it
 * exists so an operator who sets ONLINE_THRESHOLD_SECONDS=60 on one process, believing that is
 * the rule, learns at once that the rule in force is another value.
 */
import { ConfigError } from '../infra/config.ts';
import { isDatabaseUnavailable } from '../infra/db.ts';
import type { Logger } from '../infra/logger.ts';
import { readPresenceSettings, type Executor } from './pulse-store.ts';

export interface LocalPresenceSettings {
  ONLINE_THRESHOLD_SECONDS?: number | undefined;
  /** The sweeper's sweep age. */
  SWEEP_OLDER_THAN_SECONDS?: number | undefined;
}

/** The problems (empty: none) between this process's settings and the database's threshold. */
export function contradictions(local: LocalPresenceSettings, databaseThreshold: number): string[] {
  const problems: string[] = [];
  const where = 'the database (pulse_settings.online_threshold_seconds)';
  const fix =
    'set it with npm run migrate (ONLINE_THRESHOLD_SECONDS in its environment) or UPDATE pulse_settings, and unset it here or make them equal';
  if (
    local.ONLINE_THRESHOLD_SECONDS !== undefined &&
    local.ONLINE_THRESHOLD_SECONDS !== databaseThreshold
  ) {
    problems.push(
      `ONLINE_THRESHOLD_SECONDS is ${local.ONLINE_THRESHOLD_SECONDS} here but ${databaseThreshold} in ${where}: ${fix}`,
    );
  }
  if (
    local.SWEEP_OLDER_THAN_SECONDS !== undefined &&
    local.SWEEP_OLDER_THAN_SECONDS < databaseThreshold
  ) {
    problems.push(
      `SWEEP_OLDER_THAN_SECONDS is ${local.SWEEP_OLDER_THAN_SECONDS}, below the online threshold ${databaseThreshold} in ${where}: raise SWEEP_OLDER_THAN_SECONDS to at least ${databaseThreshold} (until then the sweeper keeps rows for ${databaseThreshold} s)`,
    );
  }
  return problems;
}

/**
 * Throws a ConfigError naming both values when this process's settings contradict the database's;
 * else returns the database's online threshold. When the database cannot be read yet (down, or not
 * migrated), logs a warning and returns undefined: the process starts, and its queries apply the
 * database's rule whenever they run.
 */
export async function checkSharedSettings(
  db: Executor,
  local: LocalPresenceSettings,
  logger: Logger,
): Promise<number | undefined> {
  let threshold: number;
  try {
    threshold = (await readPresenceSettings(db)).onlineThresholdSeconds;
  } catch (error) {
    const reason = isDatabaseUnavailable(error)
      ? 'database unavailable'
      : error instanceof Error
        ? error.message
        : String(error);
    logger.warn(
      { code: 'settings_unchecked', reason },
      'could not compare this process settings with pulse_settings; queries read them live anyway',
    );
    return undefined;
  }
  const problems = contradictions(local, threshold);
  if (problems.length > 0) throw new ConfigError(problems);
  return threshold;
}
