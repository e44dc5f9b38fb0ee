export { PulseClient } from './client.ts';
export {
  PulseError,
  type ConnectionStatus,
  type PresenceChange,
  type PulseClientOptions,
  type StopOptions,
} from './types.ts';
