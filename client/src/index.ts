export { PulseClient } from './client.ts';
export {
  PulseError,
  type ConnectionStatus,
  type DeviceKind,
  type DeviceSummary,
  type PresenceChange,
  type PulseClientOptions,
  type StopOptions,
} from './types.ts';
