# syntax=docker/dockerfile:1
#
# commitd: the service runs its TypeScript sources through tsx's loader; the sqlite stores'
# threads run a bundle of theirs, made at install (scripts/build-sqlite-thread.ts).
#
#   docker build -t commitd .
#   docker run --rm -e COMMITD_TOKEN=... -p 127.0.0.1:8080:8080 commitd
#
# The image listens on 0.0.0.0, so COMMITD_TOKEN is required at run time: commitd refuses
# to serve beyond loopback without a token (it exits with code 2 and says so). No token is
# baked into the image.

# Node 20 (≥ 20.19, what package.json's engines ask for; the node:20 images are past it).
ARG NODE_IMAGE=node:20-slim

# --- dependencies: better-sqlite3 is a native module, built (or fetched) here ------------
FROM ${NODE_IMAGE} AS deps
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make gcc g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
# npm ci's postinstall builds the sqlite stores' guard extension (native/sqlite-guard.c).
COPY scripts ./scripts
COPY native ./native
# Runtime dependencies only: tsx is one of them; typescript and the @types are not needed.
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

# --- runtime: no compiler toolchain ------------------------------------------------------
FROM ${NODE_IMAGE}
ENV NODE_ENV=production \
    NPM_CONFIG_UPDATE_NOTIFIER=false \
    COMMITD_HOST=0.0.0.0 \
    COMMITD_PORT=8080 \
    COMMITD_DATA_DIR=/var/lib/commitd
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY --from=deps /app/native/build ./native/build
COPY package.json package-lock.json tsconfig.json ./
COPY src ./src
# The sqlite stores' threads start from a bundle of their sources (esbuild, a dependency):
# a quarter of the start-up CPU of running them through tsx.
COPY scripts/build-sqlite-thread.ts ./scripts/
RUN node --import tsx scripts/build-sqlite-thread.ts
# The data dir (embedded KV, sqlite stores, instance id) belongs to the unprivileged user;
# a named volume mounted here starts out with this ownership.
RUN mkdir -p /var/lib/commitd && chown node:node /var/lib/commitd
USER node
VOLUME ["/var/lib/commitd"]
EXPOSE 8080
# /healthz is public (no token). slim has no curl: node's fetch does it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.COMMITD_PORT || 8080) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# node itself, not a wrapper (npx, tsx's CLI, a shell): SIGTERM from `docker stop` reaches
# commitd, which stops taking requests, cancels open sessions and exits. pino-pretty is a
# devDependency, absent here: logs are JSON lines.
CMD ["node", "--import", "tsx", "src/main.ts"]
