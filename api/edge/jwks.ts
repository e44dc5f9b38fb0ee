/**
 * Verification keys from an identity provider's JWKS URL (AUTH_JWKS_URL), through jose's remote key
 * set: fetched once at start, cached for AUTH_JWKS_CACHE_SECONDS, fetched again for a key id it does
 * not know (a rotation), at most once per AUTH_JWKS_COOLDOWN_SECONDS.
 *
 * What jose's remote set does not do by itself, and Pulse needs: when the endpoint cannot be
 * reached (or answers something that is not a key set), the last good keys stay in use, the
 * failure is logged once (and the recovery once), and fetching is retried at most once per
 * cooldown rather than on every request. A token whose key is not among the last good keys, or any
 * token before the first successful fetch, cannot be verified: it is refused with 503
 * `auth_unavailable` (KeysUnavailable), never accepted.
 */
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  errors,
  type FlattenedJWSInput,
  type JWSHeaderParameters,
} from 'jose';
import { errorFields, type Logger } from '../../lib/infra/logger.ts';

/** The keys could not be fetched and none of the last good ones fits: the token is not verifiable. */
export class KeysUnavailable extends Error {
  constructor(readonly retryAfterSeconds: number) {
    super("the identity provider's keys cannot be fetched, retry later");
    this.name = 'KeysUnavailable';
  }
}

export interface JwksOptions {
  url: URL;
  cacheSeconds: number;
  cooldownSeconds: number;
  timeoutMs: number;
  logger: Logger;
}

type KeyResolver = ReturnType<typeof createLocalJWKSet>;

export class JwksKeySource {
  private readonly remote: ReturnType<typeof createRemoteJWKSet>;
  /** Built from the last key set fetched successfully (jose caches the imported keys in it). */
  private local: KeyResolver | undefined;
  /** When the last fetch failed (Date.now()); undefined while the endpoint answers. */
  private failedAt: number | undefined;
  private reloading: Promise<boolean> | undefined;

  constructor(private readonly options: JwksOptions) {
    this.remote = createRemoteJWKSet(options.url, {
      cacheMaxAge: options.cacheSeconds * 1000,
      cooldownDuration: options.cooldownSeconds * 1000,
      timeoutDuration: options.timeoutMs,
    });
  }

  /** Fetches the keys now (at start), so the first request does not wait for them. */
  warm(): Promise<boolean> {
    return this.reload();
  }

  /** The key for a token (jose's key-resolver signature), or throws KeysUnavailable. */
  readonly key = async (header: JWSHeaderParameters, token: FlattenedJWSInput) => {
    if (!this.remote.fresh) await this.reload();
    const local = this.local;
    if (local === undefined) throw new KeysUnavailable(this.retryAfterSeconds());
    try {
      return await local(header, token);
    } catch (error) {
      if (!(error instanceof errors.JWKSNoMatchingKey)) throw error;
      // A key id not in the set: maybe rotated in since the last fetch. Fetched recently: it is not.
      if (this.remote.coolingDown) throw error;
      if (!(await this.reload())) throw new KeysUnavailable(this.retryAfterSeconds());
      return this.local!(header, token);
    }
  };

  private retryAfterSeconds(): number {
    return Math.max(1, this.options.cooldownSeconds);
  }

  /** One fetch at a time; after a failure, none until the cooldown has passed. True: fetched. */
  private reload(): Promise<boolean> {
    if (
      this.failedAt !== undefined &&
      Date.now() - this.failedAt < this.options.cooldownSeconds * 1000
    ) {
      return Promise.resolve(false);
    }
    this.reloading ??= this.remote
      .reload()
      .then(
        () => {
          this.local = createLocalJWKSet(this.remote.jwks()!);
          if (this.failedAt !== undefined) {
            this.options.logger.info(
              { url: this.options.url.href },
              'the JWKS endpoint answers again; keys refreshed',
            );
          }
          this.failedAt = undefined;
          return true;
        },
        (error: unknown) => {
          if (this.failedAt === undefined) {
            this.options.logger.warn(
              {
                url: this.options.url.href,
                err: errorFields(error, 0, false),
                keptKeys: this.local !== undefined,
              },
              this.local === undefined
                ? 'the JWKS endpoint cannot be reached and no keys were fetched yet: tokens are refused with 503 auth_unavailable'
                : 'the JWKS endpoint cannot be reached: the last good keys stay in use; tokens signed with another key are refused with 503 auth_unavailable',
            );
          }
          this.failedAt = Date.now();
          return false;
        },
      )
      .finally(() => (this.reloading = undefined));
    return this.reloading;
  }
}
