/*
 * commitd's guard for the connections of a `sqlite` store, loaded as a SQLite extension
 * (better-sqlite3 exposes neither an authorizer nor a progress handler).
 *
 * - An authorizer that, while the guard is on, refuses every statement that would read or
 *   write commitd's bookkeeping (the marker table `commitd_sessions`, by any route the
 *   compiler takes: a CTE, a view, a trigger body, DDL, a rename), create objects that
 *   would outlive the session on the shared connection (TEMP tables, views, triggers) or
 *   shadow the marker table, attach databases, run pragmas or transaction statements, or
 *   call `load_extension` and commitd's own `commitd_*` functions. SQLite consults it when
 *   it compiles a statement, also when it recompiles one after a schema change, so a
 *   statement compiled with the guard on can only run with the guard on.
 * - A watchdog thread per connection that aborts the running statement with
 *   `sqlite3_interrupt` (SQLITE_INTERRUPT) once the deadline commitd armed has passed.
 *   better-sqlite3 is built without progress handlers, and `sqlite3_interrupt` is the
 *   one call SQLite allows from another thread.
 *
 * commitd switches both with `commitd_guard(secret, on, limit_ms)`. The secret is random per
 * connection and handed out once, by `commitd_secret()`, which commitd calls right after
 * loading the extension, before any worker's statement runs: a worker cannot switch the
 * guard off or lift the limit. Both functions are DIRECTONLY (no use in views or triggers).
 */
#include <sqlite3ext.h>
SQLITE_EXTENSION_INIT1
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <pthread.h>
#include <time.h>

#define MARKER_TABLE "commitd_sessions"

#define SECRET_BYTES 16

typedef struct {
  char secret[SECRET_BYTES * 2];
  int secret_taken;
  int guarded;
  sqlite3 *db;
  /* The watchdog: `deadline_ns` (CLOCK_MONOTONIC, 0 = unarmed) under `lock`. */
  pthread_t watchdog;
  pthread_mutex_t lock;
  pthread_cond_t changed;
  long long deadline_ns;
  int interrupted;
  /* The rule the last refused action broke, for commitd's error message. */
  const char *denied;
  int stopping;
} Guard;

static long long now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int is_marker(const char *name) {
  return name != 0 && sqlite3_stricmp(name, MARKER_TABLE) == 0;
}

static int deny(Guard *guard, const char *rule) {
  guard->denied = rule;
  return SQLITE_DENY;
}

static int authorize(void *state, int action, const char *a1, const char *a2, const char *db, const char *inner) {
  Guard *guard = (Guard *)state;
  (void)db;
  (void)inner;
  if (!guard->guarded) return SQLITE_OK;
  switch (action) {
    /* a1 = table */
    case SQLITE_READ:
    case SQLITE_INSERT:
    case SQLITE_UPDATE:
    case SQLITE_DELETE:
    case SQLITE_DROP_TABLE:
    case SQLITE_ANALYZE:
    /* a1 = name of the new table or view: none may shadow the marker table */
    case SQLITE_CREATE_TABLE:
    case SQLITE_CREATE_VIEW:
      return is_marker(a1) ? deny(guard, "marker-table") : SQLITE_OK;
    /* a2 = table */
    case SQLITE_ALTER_TABLE:
    case SQLITE_CREATE_INDEX:
    case SQLITE_DROP_INDEX:
    case SQLITE_CREATE_TRIGGER:
    case SQLITE_DROP_TRIGGER:
      return is_marker(a2) ? deny(guard, "marker-table") : SQLITE_OK;
    /* TEMP objects live on the connection, which every session of the store shares */
    case SQLITE_CREATE_TEMP_TABLE:
    case SQLITE_CREATE_TEMP_VIEW:
    case SQLITE_CREATE_TEMP_TRIGGER:
    case SQLITE_CREATE_TEMP_INDEX:
    case SQLITE_CREATE_VTABLE:
    case SQLITE_DROP_VTABLE:
      return deny(guard, "connection-object");
    case SQLITE_ATTACH:
    case SQLITE_DETACH:
      return deny(guard, "attach");
    case SQLITE_PRAGMA:
      return deny(guard, "pragma");
    case SQLITE_TRANSACTION:
    case SQLITE_SAVEPOINT:
      return deny(guard, "transaction");
    /* a2 = function name */
    case SQLITE_FUNCTION:
      if (a2 == 0) return SQLITE_OK;
      if (sqlite3_stricmp(a2, "load_extension") == 0) return deny(guard, "function");
      /* commitd_guard itself is allowed: it checks its secret (an authorizer decision
       * would be re-made when SQLite recompiles commitd's own call after a schema change) */
      if (sqlite3_stricmp(a2, "commitd_secret") == 0) return deny(guard, "function");
      return SQLITE_OK;
    default:
      return SQLITE_OK;
  }
}

static void *watch(void *state) {
  Guard *guard = (Guard *)state;
  pthread_mutex_lock(&guard->lock);
  while (!guard->stopping) {
    if (guard->deadline_ns == 0) {
      pthread_cond_wait(&guard->changed, &guard->lock);
    } else if (now_ns() >= guard->deadline_ns) {
      guard->deadline_ns = 0;
      guard->interrupted = 1;
      sqlite3_interrupt(guard->db);
    } else {
      struct timespec until;
      until.tv_sec = (time_t)(guard->deadline_ns / 1000000000LL);
      until.tv_nsec = (long)(guard->deadline_ns % 1000000000LL);
      pthread_cond_timedwait(&guard->changed, &guard->lock, &until);
    }
  }
  pthread_mutex_unlock(&guard->lock);
  return 0;
}

/* Runs inside sqlite3_close, before the connection goes: no interrupt can follow it. */
static void destroy(void *state) {
  Guard *guard = (Guard *)state;
  pthread_mutex_lock(&guard->lock);
  guard->stopping = 1;
  pthread_cond_signal(&guard->changed);
  pthread_mutex_unlock(&guard->lock);
  pthread_join(guard->watchdog, 0);
  pthread_cond_destroy(&guard->changed);
  pthread_mutex_destroy(&guard->lock);
  sqlite3_free(guard);
}

/* The secret commitd's own calls carry: handed out once, to commitd, right after loading. */
static int check_secret(Guard *guard, sqlite3_context *ctx, sqlite3_value *given) {
  if (sqlite3_value_bytes(given) == SECRET_BYTES * 2 && memcmp(sqlite3_value_text(given), guard->secret, SECRET_BYTES * 2) == 0) return 1;
  guard->denied = "function";
  sqlite3_result_error(ctx, "commitd_guard is commitd's own", -1);
  return 0;
}

/* commitd_secret(): the secret, the first time only. */
static void secret_fn(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  Guard *guard = (Guard *)sqlite3_user_data(ctx);
  (void)argc;
  (void)argv;
  if (guard->secret_taken) {
    sqlite3_result_error(ctx, "commitd_secret was already taken", -1);
    return;
  }
  guard->secret_taken = 1;
  sqlite3_result_text(ctx, guard->secret, SECRET_BYTES * 2, SQLITE_TRANSIENT);
}

/* commitd_guard(secret, on, limit_ms): `on` while a worker's statement is compiled or run;
 * statements abort once limit_ms have passed (0: no limit). Returns what happened since the
 * previous call — 'interrupted' (a statement reached the limit), the rule of the last
 * refused action, or NULL — and forgets it. */
static void guard_fn(sqlite3_context *ctx, int argc, sqlite3_value **argv) {
  Guard *guard = (Guard *)sqlite3_user_data(ctx);
  sqlite3_int64 ms;
  int was;
  const char *denied = guard->denied;
  (void)argc;
  if (!check_secret(guard, ctx, argv[0])) return;
  guard->denied = 0;
  ms = sqlite3_value_int64(argv[2]);
  guard->guarded = sqlite3_value_int(argv[1]) != 0;
  pthread_mutex_lock(&guard->lock);
  was = guard->interrupted;
  guard->interrupted = 0;
  guard->deadline_ns = ms > 0 ? now_ns() + ms * 1000000LL : 0;
  pthread_cond_signal(&guard->changed);
  pthread_mutex_unlock(&guard->lock);
  if (was) sqlite3_result_text(ctx, "interrupted", -1, SQLITE_STATIC);
  else if (denied) sqlite3_result_text(ctx, denied, -1, SQLITE_STATIC);
  else sqlite3_result_null(ctx);
}

#ifdef _WIN32
__declspec(dllexport)
#endif
int sqlite3_sqliteguard_init(sqlite3 *db, char **error, const sqlite3_api_routines *api) {
  Guard *guard;
  int rc;
  unsigned char random[SECRET_BYTES];
  pthread_condattr_t monotonic;
  static const char hex[] = "0123456789abcdef";
  int i;
  SQLITE_EXTENSION_INIT2(api);
  guard = (Guard *)sqlite3_malloc(sizeof(Guard));
  if (guard == 0) return SQLITE_NOMEM;
  memset(guard, 0, sizeof(Guard));
  sqlite3_randomness(SECRET_BYTES, random);
  for (i = 0; i < SECRET_BYTES; i++) {
    guard->secret[2 * i] = hex[random[i] >> 4];
    guard->secret[2 * i + 1] = hex[random[i] & 15];
  }
  guard->db = db;
  pthread_mutex_init(&guard->lock, 0);
  pthread_condattr_init(&monotonic);
  pthread_condattr_setclock(&monotonic, CLOCK_MONOTONIC);
  pthread_cond_init(&guard->changed, &monotonic);
  pthread_condattr_destroy(&monotonic);
  if (pthread_create(&guard->watchdog, 0, watch, guard) != 0) {
    pthread_cond_destroy(&guard->changed);
    pthread_mutex_destroy(&guard->lock);
    sqlite3_free(guard);
    *error = sqlite3_mprintf("commitd guard: cannot start its watchdog thread");
    return SQLITE_ERROR;
  }
  /* The guard lives as long as the connection: destroyed with the function that owns it. */
  rc = sqlite3_create_function_v2(db, "commitd_guard", 3, SQLITE_UTF8 | SQLITE_DIRECTONLY, guard, guard_fn, 0, 0, destroy);
  if (rc != SQLITE_OK) {
    *error = sqlite3_mprintf("commitd guard: cannot register its functions");
    return rc;
  }
  rc = sqlite3_create_function_v2(db, "commitd_secret", 0, SQLITE_UTF8 | SQLITE_DIRECTONLY, guard, secret_fn, 0, 0, 0);
  if (rc != SQLITE_OK) return rc;
  sqlite3_set_authorizer(db, authorize, guard);
  return SQLITE_OK;
}
