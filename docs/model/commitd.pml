/*
 * commitd.pml -- a Promela model of commitd's commit protocol (DESIGN.md "Session
 * lifecycle"; src/coordinator/{coordinator,session}.ts, src/committables/helper.ts).
 *
 * Check:  spin -a commitd.pml && gcc -O2 -o pan pan.c && ./pan -m100000
 * Teeth:  spin -a -DNO_MARKER commitd.pml ...         (stores commit without the marker check)
 *         spin -a -DCANCEL_COMMITTING commitd.pml ... (recovery cancels committing records)
 *         spin -a -DREPLY_BEFORE_STORES commitd.pml ... (the early reply leaves before the last store committed)
 * Each broken variant must end with "errors: 1" (or more); the real protocol with "errors: 0".
 * Size: about 2.4 million states, 2 s and 320 MB with the default bounds (test/model.test.ts
 * runs all three). Larger bounds verify too: -DMAXFAULT=2 (4.4 M states), -DMAXEXPIRY=2
 * (3.7 M), -DMAXCRASH=2 (12.2 M, 15 s; compile with -DCOLLAPSE).
 *
 * MODELLED
 * - One idempotency key, one unit of work, hence one session ID (a marker holds "the" ID).
 * - Two coordinator processes: OWNER (instance 0) begins and commits the session, interactive
 *   (create `active`, then compare-revision update to `committing` = the commit point) or
 *   one-shot (the record is created `committing` at the commit point); ADOPTER (instance 1)
 *   runs recovery passes. After a failed step (503) the owner runs recovery on its own
 *   record too (scheduleRecovery / the periodic pass).
 * - The coordinator KV: the session record (state, owner, revision) written only by create
 *   or compare-revision updates/deletes, and the result record, created in the same
 *   transaction that deletes the session record (step 4d), guarded by the revision.
 * - Two stores, each with its data and its per-key unique marker committed atomically; a
 *   marker already there with the same ID makes the commit a skip (MarkerExistsError,
 *   same ID); beginRecovery reads the marker and enters skip mode.
 * - Crashes (SIGKILL) of either process at every failpoint and between steps; a crashed
 *   process either stays dead or restarts with the same instance id, which adopts its own
 *   records at once without a KV write (Coordinator#adopt).
 * - Leases: the owner's lease may expire while it is alive (SIGSTOP, a partition) and come
 *   back once (re-registration); the paused owner then simply continues where it stopped,
 *   ignoring the loss, which is the worst case (in-flight steps do continue in the code).
 *   Liveness of an owner is read separately from the record (isAlive after get), and the
 *   adopter takes ownership with a compare-revision write.
 * - Passing failures, MAXFAULT of them in all: a KV write may land with its answer lost
 *   (the ambiguous commit-point write), or not land at all (etcd unreachable, a member lost
 *   mid-request); a store may be down. The caller sees an error (503) and recovery decides
 *   from what is durable. A store commit whose answer is lost is the same, to every
 *   process, as a failure of the step after it, so it is not a separate branch.
 * - Cancel of an `active` session (explicit, apply/prepare error, idle timeout after a
 *   worker crash), recovery cancelling an `active` record, roll-forward of a `committing`
 *   one, a store rejecting the re-applied changes (-> `failed`), and one operator
 *   `resolve retry` (failed -> committing, rolled forward again).
 *
 * ABSTRACTED AWAY
 * - Store begin/apply/prepare before the commit point: uncommitted and private to the
 *   process that holds them, so they are not state here (a crash discards them). Not
 *   modelled: PostgreSQL two-phase prepared transactions (which outlive the process) and
 *   resolveOrphans; SQLite's write lock held by a paused process.
 * - Change contents, hashing, log chunks, the result's retention and marker expiry, a
 *   second session with other changes under the same key (MARKER_CONFLICT), the worker
 *   and its retries, resolve `abandon`, and three or more instances.
 * - `begin` on an abandoned `active` record resuming it (beginRecovery, empty log), and one
 *   instance driving a session twice at once (a commit still in flight after its lease
 *   was lost, while its own recovery pass rolls the same record forward): both are
 *   covered by the markers in the same way as owner-vs-adopter, but not modelled here.
 *   See docs/recovery.md "Known gaps".
 * - Time: lease expiry is an event that may happen at any moment, not a clock.
 *
 * PROPERTIES
 * - Safety (checked in every reachable state by `monitor`): each store holds the data at
 *   most once; no store holds data before the commit point; a result exists only when
 *   every store holds the data exactly once and the session record is gone.
 * - At the end (no process can move, `finale`): if the commit point was reached and the
 *   adopter finished its recovery passes (not crashed for good), then every store holds
 *   the data exactly once and the result is written.
 * - Early reply: the owner answers "committed" once every store committed, before the
 *   result write (step 4d) lands (RecordSlot.release). When it answers, every store holds
 *   the data exactly once (monitor), and at the end, if the adopter finished its passes,
 *   the result exists (finale): a lost or failed result write, or a crash before it, is
 *   finished by recovery. A retry on the owner meanwhile waits for the write; a retry on
 *   another instance waits (bounded) for the owner's `committing` record to change and then
 *   answers from the result, which the monitor ties to the data as it does the owner's
 *   answer, or `session_busy` (no claim). Workers and their retries are not modelled.
 * - Group commit (several sessions' writes in one KV transaction, each with its own
 *   conditions) is not a separate step: each write is still atomic and conditional on its
 *   own, exactly as modelled; sessions of other keys do not share state here.
 */

#define NSTORES 2
#define OWNER   0
#define ADOPTER 1

/* session record states; NONE = no `sessions/<key>` record */
#define NONE       0
#define ACTIVE     1
#define COMMITTING 2
#define FAILED     3

#ifndef MAXCRASH
#define MAXCRASH 1   /* crashes per process */
#endif
#ifndef MAXEXPIRY
#define MAXEXPIRY 1  /* times the owner's lease runs out while it lives (paused) */
#endif

/* the coordinator KV */
byte rec_state = NONE;
byte rec_owner;
byte rec_rev;          /* revision of the session record */
byte kv_rev;           /* the KV's revision counter */
bool result;           /* `results/<key>` */

bool lease[2];         /* `instances/<id>` exists (its lease is alive) */

/* the stores */
byte applied[NSTORES]; /* how many times the session's changes were committed there */
bool marker[NSTORES];  /* the unique marker for the key */

/* ghosts */
bool commit_point;     /* the record turned `committing` once */
bool answered;         /* the owner answered "committed" to the worker */
bool owner_quiet;      /* the owner stopped for good (finished, or dead) */
bool adopter_done;     /* the adopter finished its recovery passes */
bool dead[2];           /* crashed and stays down */
byte crashes[2];
byte expiries;
byte regrants;
byte rejects;
byte faults;
byte resolves;

#define AT_MOST_ONCE          (applied[0] <= 1 && applied[1] <= 1)
#define NOTHING_BEFORE_POINT  (commit_point || (applied[0] == 0 && applied[1] == 0))
#define RESULT_MEANS_ALL      (!result || (applied[0] == 1 && applied[1] == 1 && rec_state == NONE))
#define FINISHED_MEANS_ALL    (!(commit_point && adopter_done) || (result && applied[0] == 1 && applied[1] == 1))
#define ANSWER_MEANS_ALL      (!answered || (applied[0] == 1 && applied[1] == 1))
#define ANSWER_GETS_RESULT    (!(answered && adopter_done) || result)

inline kv_write() {
  kv_rev++;
  rec_rev = kv_rev
}

/* A store commits its data only by inserting its unique marker in the same transaction. */
inline store_commit(s) {
  atomic {
#ifdef NO_MARKER
    applied[s]++;
    marker[s] = true
#else
    if
    :: marker[s] -> skip               /* MarkerExistsError with our ID: skip */
    :: !marker[s] -> applied[s]++; marker[s] = true
    fi
#endif
  }
}

#ifndef MAXFAULT
#define MAXFAULT 1   /* passing failures (store down, etcd unreachable, lost answers) in all */
#endif
#define FAULT (faults < MAXFAULT)

/* A failpoint with action `crash`, or any other moment the process may die. */
#define CRASH_POINT  if :: crashes[id] < MAXCRASH -> goto crashed :: true -> skip fi

/* Step 4d: result and delete of the session record in one transaction, guarded by the
 * revision; on ConstraintViolated, a result already there (someone else's) is fine. */
#define RELEASE(onfail) \
  if \
  :: atomic { (!result && rec_state != NONE && rec_rev == myrev) -> \
       result = true; rec_state = NONE; kv_write() } \
     if :: skip :: FAULT -> faults++; goto onfail fi  /* answered, or the answer lost */ \
  :: atomic { !(!result && rec_state != NONE && rec_rev == myrev) -> skip } \
     if :: result -> skip :: else -> goto onfail fi \
  :: FAULT -> faults++; goto onfail  /* etcd unreachable: nothing written */ \
  fi

/* A process forgets everything between recovery passes, and when it crashes. */
#define RESET_LOCALS  st = 0; myrev = 0; s = 0; skipm[0] = false; skipm[1] = false

proctype coord(byte id)
{
  byte myrev;
  byte st;
  byte s;
  bool skipm[NSTORES];

  if
  :: id == OWNER -> goto begin
  :: else -> goto end_recover
  fi;

begin:
  if
  :: /* interactive: begin creates the `active` record, guarded by "no result" */
     atomic { (rec_state == NONE && !result) ->
       rec_state = ACTIVE; rec_owner = id; kv_write(); myrev = rec_rev }
     CRASH_POINT;                             /* begin.afterRecord */
     /* stores begin, changes applied, stores prepared: nothing durable */
     if
     :: /* cancel: explicit, an apply/prepare error, or the idle timeout (worker gone) */
        atomic {
          if
          :: rec_state == ACTIVE && rec_rev == myrev -> rec_state = NONE; kv_write()
          :: else -> skip                     /* adopted meanwhile: the delete fails */
          fi }
        goto done
     :: skip
     fi;
     /* step 4b, the commit point: compare-revision update to `committing` with the log */
     if
     :: atomic { (rec_state == ACTIVE && rec_rev == myrev) ->
          rec_state = COMMITTING; kv_write(); myrev = rec_rev; commit_point = true }
        if
        :: skip
        :: FAULT -> faults++; goto failed     /* landed, the answer lost (ambiguous) */
        fi
     :: atomic { !(rec_state == ACTIVE && rec_rev == myrev) -> skip }
        goto failed                           /* VersionMismatch: adopted meanwhile */
     :: FAULT -> faults++; goto failed        /* etcd unreachable: not landed */
     fi
  :: /* one-shot: the record is created at the commit point, guarded by "no result" */
     atomic { (rec_state == NONE && !result) ->
       rec_state = COMMITTING; rec_owner = id; kv_write(); myrev = rec_rev; commit_point = true }
  fi;
  CRASH_POINT;                                /* commit.afterIntent */
#ifdef REPLY_BEFORE_STORES
  answered = true;
#endif
  /* step 4c: commit the stores in name order */
  s = 0;
  do
  :: s < NSTORES ->
     if
     :: store_commit(s)
     :: FAULT -> faults++; goto failed        /* store down (a lost answer = a later failure) */
     fi;
     CRASH_POINT;                             /* commit.afterStore.N; after the last: commit.beforeResult */
     s++
  :: else -> break
  od;
  /* every store committed: the answer is certain and leaves now (early reply); then 4d */
  answered = true;                            /* 200 committed */
  RELEASE(failed);
  assert(result);
  goto done;

failed:
  /* 503 + Retry-After to the worker; recovery of this key on this instance */
  goto next;

  /* Recovery passes over the one key, until nothing is left to do. */
end_recover:
  do
  :: (rec_state == NONE && (id == OWNER || owner_quiet)) -> break
  :: atomic { ((rec_state == ACTIVE || rec_state == COMMITTING) && (rec_owner == id || !lease[rec_owner])) ->
       st = rec_state; myrev = rec_rev;
       if
       :: rec_owner == id -> goto adopted     /* our own record (a restart): no write */
       :: else -> skip
       fi }
     /* take ownership: compare-revision update */
     if
     :: atomic { rec_rev == myrev -> rec_owner = id; kv_write(); myrev = rec_rev }
     :: atomic { rec_rev != myrev -> skip }; goto next   /* another adopted first */
     fi;
adopted:
     CRASH_POINT;                             /* recovery.afterAdopt */
#ifndef CANCEL_COMMITTING
     if
     :: st == COMMITTING -> goto rollforward
     :: st != COMMITTING -> skip
     fi;
#endif
     /* `active`: nothing reached a store; cancel: delete the record */
     atomic {
       if
       :: rec_rev == myrev -> rec_state = NONE; kv_write()
       :: rec_rev != myrev -> skip
       fi }
     goto next
  :: atomic { (rec_state == FAILED && resolves < 1) ->   /* operator: resolve retry */
       resolves++; rec_state = COMMITTING; rec_owner = id; kv_write(); myrev = rec_rev }
     goto rollforward
  od;
  goto done;

rollforward:
  /* beginRecovery: a store that holds the marker enters skip mode; re-apply the logged
   * changes and prepare: a store without the marker may reject them (another writer got
   * there between the crash and the recovery) */
  s = 0;
  do
  :: s < NSTORES ->
     skipm[s] = marker[s];
     if
     :: !skipm[s] && rejects < 1 -> rejects++; goto markfailed
     :: skip
     fi;
     s++
  :: else -> break
  od;
  s = 0;
  do
  :: s < NSTORES ->
     if
     :: skipm[s] -> skip
     :: else ->
        if
        :: store_commit(s)
        :: FAULT -> faults++; goto next       /* store down: pending, the next pass retries */
        fi
     fi;
     CRASH_POINT;
     s++
  :: else -> break
  od;
  RELEASE(next);
  goto next;

markfailed:
  atomic {
    if
    :: rec_rev == myrev -> rec_state = FAILED; kv_write()
    :: else -> skip
    fi }
  goto next;

next:
  atomic { RESET_LOCALS }
  goto end_recover;

crashed:
  atomic { crashes[id]++; lease[id] = false; RESET_LOCALS }  /* SIGKILL: its lease runs out */
  if
  :: lease[id] = true; goto next              /* restarts with the same instance id */
  :: atomic { dead[id] = true; owner_quiet = owner_quiet || id == OWNER }; goto end_stop  /* stays down */
  fi;

done:
  atomic {
    RESET_LOCALS;
    if
    :: id == OWNER -> owner_quiet = true
    :: else -> adopter_done = true
    fi }
end_stop:
  skip
}

/* The owner's lease may run out while it lives (SIGSTOP, partition), and come back once
 * when it re-registers. */
active proctype clock()
{
end_clock:
  do
  :: atomic { (expiries < MAXEXPIRY && lease[OWNER] && !dead[OWNER]) -> lease[OWNER] = false; expiries++ }
  :: atomic { (regrants < 1 && !lease[OWNER] && !dead[OWNER] && crashes[OWNER] == 0) -> lease[OWNER] = true; regrants++ }
  od
}

/* Safety, in every reachable state. */
active proctype monitor()
{
end_monitor:
  do
  :: !AT_MOST_ONCE -> assert(AT_MOST_ONCE)
  :: !NOTHING_BEFORE_POINT -> assert(NOTHING_BEFORE_POINT)
  :: !RESULT_MEANS_ALL -> assert(RESULT_MEANS_ALL)
  :: !ANSWER_MEANS_ALL -> assert(ANSWER_MEANS_ALL)
  od
}

/* When nothing can move any more. */
active proctype finale()
{
  timeout -> assert(FINISHED_MEANS_ALL && ANSWER_GETS_RESULT)
}

init
{
  atomic {
    lease[OWNER] = true;
    lease[ADOPTER] = true;
    run coord(OWNER);
    run coord(ADOPTER)
  }
}
