/**
 * The yardstick for the API's CPU per request: a bare Express 5 handler that parses a JSON body
 * and answers, with no database, no logging, no metrics. `npm run bench` starts it as a child
 * process and drives it with the same load as the API, in the same run.
 */
import express from 'express';

const app = express();
app.use(express.json());
app.post('/status/update', (_req, res) => {
  res.json({ status: 'success' });
});
const server = app.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => {
  const address = server.address();
  console.log(
    `bare express listening on ${typeof address === 'object' && address ? address.port : ''}`,
  );
});
process.on('SIGTERM', () => {
  server.close(() => process.exit(0));
  server.closeAllConnections();
});
