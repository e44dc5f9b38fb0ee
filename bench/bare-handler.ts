/**
 * The floor for the API's CPU per request: an Express 5 handler that parses a JSON body and
 * answers, no database. bench:scale runs it in the same run as the API, so ratios hold on a
 * noisy machine. PORT is given by the caller.
 */
import express from 'express';

const app = express();
app.use(express.json());
app.post('/status/update', (_req, res) => {
  res.json({ status: 'success' });
});
// startApi() waits for this route to answer before it starts the load.
app.get('/status/:userId', (req, res) => {
  res.json({ user_id: Number(req.params.userId), is_online: false });
});
const server = app.listen(Number(process.env.PORT), '127.0.0.1');
process.once('SIGTERM', () => {
  server.close();
  server.closeAllConnections();
});
