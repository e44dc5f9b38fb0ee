# syntax=docker/dockerfile:1
# Build: compile TypeScript to JavaScript.
FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts
COPY tsconfig.json tsconfig.build.json ./
COPY api ./api
COPY sweeper ./sweeper
COPY webhooks ./webhooks
COPY lib ./lib
COPY http ./http
COPY migrations ./migrations
COPY scripts ./scripts
COPY client ./client
RUN npm run build

# Runtime: production dependencies and compiled JavaScript only, as an unprivileged user.
FROM node:24-bookworm-slim AS runtime
ENV NODE_ENV=production
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts && npm cache clean --force
COPY --from=build /app/dist ./dist
# The demo page (/demo/) and the client library it serves (/client/).
COPY --from=build /app/client/package.json ./client/package.json
COPY --from=build /app/client/dist ./client/dist
COPY --from=build /app/client/demo ./client/demo
USER node
EXPOSE 3000
# node is PID 1's command (no npm or shell wrapper), so SIGTERM reaches the process.
CMD ["node", "--expose-gc", "dist/api/main.js"]
