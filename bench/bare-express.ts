/**
 * The yardstick for the API's CPU per request: a bare Express 5 handler that parses a JSON body
 * and answers, with no database, no logging, no metrics. `npm run bench` starts it as a child
 * process and drives it with the same load as the API, in the same run.
 *
 * BARE_SERVER=pulse serves it through Pulse's HTTP server (http/server.ts: requests born with
 * Express's prototypes, Pulse's timeouts) instead of `app.listen`: the like-for-like yardstick,
 * since that server alone spends about 3x less CPU per request than Express as usually started.
 */
import express from 'express';
import { listen } from '../http/server.ts';

const app = express();
app.use(express.json());
app.post('/status/update', (_req, res) => {
  res.json({ status: 'success' });
});
const port = Number(process.env.PORT ?? 0);
const server =
  process.env.BARE_SERVER === 'pulse'
    ? (await listen(app, port, '127.0.0.1')).server
    : app.listen(port, '127.0.0.1');
process.on('SIGTERM', () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
});
