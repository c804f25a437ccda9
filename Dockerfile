# syntax=docker/dockerfile:1
# The gateway image (issue 9). Build: docker build -t workspace-gateway .
# Three stages so the shipped image holds production dependencies and compiled JavaScript only.
# The same image runs the reaper: command ["node","dist/reaper/main.js"].

# Pinned to an exact release (bump deliberately; the digest can be pinned too: node:20.20.2-bookworm-slim@sha256:...).
ARG NODE_IMAGE=node:20.20.2-bookworm-slim

# ---- build: all dependencies, TypeScript -> dist/
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
RUN npm run build

# ---- deps: production dependencies only
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

# ---- runtime
FROM ${NODE_IMAGE} AS runtime
# tini as PID 1 forwards SIGTERM to node and reaps zombies; docker's --init cannot be assumed on
# ECS (the task definition also sets initProcessEnabled; -s keeps tini correct when it is not PID 1).
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*
# LISTEN_HOST: a container's own loopback is out of reach of `docker run -p`, and the gateway binds
# 127.0.0.1 by default when BASE_DOMAIN is localhost (the try-it-out case); the published ports decide
# exposure here. LOCAL_DATA_DIR: the local provisioner's folders somewhere the node user may write
# (/app is root's). Both only matter to `docker run` with no settings; ECS sets its own.
ENV NODE_ENV=production \
    LISTEN_HOST=0.0.0.0 \
    LOCAL_DATA_DIR=/home/node/workspaces
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/dist ./dist
# The node image's unprivileged user (uid 1000); the code stays owned by root, read-only to it.
USER node
EXPOSE 8080 9090
# The admin port as the container was told it (ADMIN_PORT), not the default: a fixed 9090 left a
# gateway run with another port unhealthy forever (test/image.test.ts).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.ADMIN_PORT||9090)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
ENTRYPOINT ["/usr/bin/tini", "-s", "--"]
# A young generation of 4 MB a half instead of V8's 16: a proxy's garbage dies young, and the larger
# one only inflated resident memory by up to 20 MB whenever a burst of WebSockets opened after an
# idle spell, at no throughput gain. No memory reducer: after an idle spell V8 runs it as load comes
# back, and its full collections stopped the gateway for 10-30 ms (a paced WebSocket p99 of 7 ms
# instead of 0.3-1.4), to give back at most 14 MB of an idle gateway's 88 (README, "What was
# tried"). package.json's start and the bench run the gateway with these same flags
# (test/dockerfile.test.ts).
CMD ["node","--max-semi-space-size=4","--no-memory-reducer","dist/gateway/main.js"]
