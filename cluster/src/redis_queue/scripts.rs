//! The Lua scripts behind [`RedisQueue`](super::RedisQueue), one per atomic step.
//!
//! Two families, which never mix: *deployment* scripts touch only keys tagged
//! `{dep:<name>}` (the work stream, its consumer group and the lease index), *job* scripts
//! touch only keys tagged `{job:<id>}` (the job's state and output stream). Each script
//! is therefore atomic within one Redis Cluster slot. The module docs of
//! [`redis_queue`](super) describe how the two families are sequenced.
//!
//! Every script that needs "now" for a lease asks the server (`TIME`), so lease expiry
//! does not depend on the clocks of the machines running Swell.

use redis::Script;

/// Deployment scripts: `KEYS[1]` the `normal` work stream, `KEYS[2]` requeued list,
/// `KEYS[3]` lease index (zset by expiry), `KEYS[4]` wake-up stream, `KEYS[5]`
/// dead-letter stream, `KEYS[6]` the `high` work stream, `KEYS[7]` the `low` work stream;
/// `ARGV[1]` the prefix of the per-job lease hashes (same hash tag), `ARGV[2]` the
/// consumer group (the same name on each work stream).
///
/// A job's lease hash records its priority (`level`; absent means `normal`), so every
/// script finds the job's entry in its own stream.
macro_rules! deployment_prelude {
    () => {
        r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function meta_key(job) return ARGV[1] .. job end
local function wake() redis.call('XADD', KEYS[4], 'MAXLEN', '16', '*', 'w', '1') end
local function fields_of(flat)
  local f = {}
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  return f
end
-- The work streams in service order, and by priority name.
local streams = {KEYS[6], KEYS[1], KEYS[7]}
local stream_of_level = {high = KEYS[6], normal = KEYS[1], low = KEYS[7]}
local rank_of_level = {high = 1, normal = 2, low = 3}
local function level_of(job)
  local level = redis.call('HGET', meta_key(job), 'level')
  if level and stream_of_level[level] then return level end
  return 'normal'
end
local function stream_of(job) return stream_of_level[level_of(job)] end
local function undelivered_in(stream)
  if redis.call('EXISTS', stream) == 0 then return 0 end
  local pending = redis.call('XPENDING', stream, ARGV[2])
  return redis.call('XLEN', stream) - tonumber(pending[1])
end
local function undelivered()
  local n = 0
  for _, stream in ipairs(streams) do n = n + undelivered_in(stream) end
  return n
end
local function waiting() return undelivered() + redis.call('LLEN', KEYS[2]) end
-- Acknowledge and delete a job's entry (in `stream`, by default the job's own) and
-- every index of it.
local function forget(job, entry, stream)
  stream = stream or stream_of(job)
  if entry and redis.call('EXISTS', stream) == 1 then
    redis.call('XACK', stream, ARGV[2], entry)
    redis.call('XDEL', stream, entry)
  end
  redis.call('ZREM', KEYS[3], job)
  redis.call('LREM', KEYS[2], 0, job)
  redis.call('DEL', meta_key(job))
end
local function last_delivered(stream)
  local groups = redis.call('XINFO', 'GROUPS', stream)
  for _, g in ipairs(groups) do
    local f = fields_of(g)
    if f['name'] == ARGV[2] then return f['last-delivered-id'] end
  end
  return '0-0'
end
local function holds(m, consumer, epoch)
  return m[1] == 'leased' and m[2] == consumer and m[3] == epoch
end
"#
    };
}

/// Job scripts: `KEYS[1]` job state hash, `KEYS[2]` output stream, `KEYS[3]` delivered
/// token ids (a string of `id,` items).
macro_rules! job_prelude {
    () => {
        r#"
-- Store one event (ignored once a terminal event is stored, like the in-memory queue).
local function push(epoch, json, terminal, tokens)
  if redis.call('HGET', KEYS[1], 'finished') == '1' then return end
  local seq = redis.call('HINCRBY', KEYS[1], 'last_seq', 1)
  redis.call('XADD', KEYS[2], '0-' .. seq, 'e', epoch, 'v', json)
  if tokens ~= '' then redis.call('APPEND', KEYS[3], tokens) end
  if terminal then redis.call('HSET', KEYS[1], 'finished', '1') end
end
local function expire_all(ttl_ms)
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl_ms) end
end
-- Output keys live as long as the state hash until the job ends.
local function align_ttl()
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[2], ttl)
    redis.call('PEXPIRE', KEYS[3], ttl)
  end
end
local function finish(epoch, json, ttl_ms)
  push(epoch, json, true, '')
  redis.call('HSET', KEYS[1], 'status', 'done')
  expire_all(ttl_ms)
end
"#
    };
}

/// Enqueue. `ARGV[3]` job id, `[4]` payload, `[5]` enqueued at (ms), `[6]` deadline (ms
/// or empty), `[7]` max waiting, `[8]` priority (`high` | `normal` | `low`), which picks
/// the work stream. Answers `{'ok', position}` (in service order: requeued jobs, then
/// the waiting jobs of this priority or higher), `{'full', waiting}` or `{'duplicate'}`.
const DEPLOYMENT_ENQUEUE: &str = concat!(
    deployment_prelude!(),
    r#"
local job, level = ARGV[3], ARGV[8]
local stream = stream_of_level[level]
if not stream then return redis.error_reply('unknown priority ' .. tostring(level)) end
if redis.call('EXISTS', meta_key(job)) == 1 then return {'duplicate'} end
if redis.call('EXISTS', stream) == 0 then
  redis.call('XGROUP', 'CREATE', stream, ARGV[2], '0', 'MKSTREAM')
end
local w = waiting()
if w >= tonumber(ARGV[7]) then return {'full', w} end
local position = redis.call('LLEN', KEYS[2]) + 1
for rank = 1, rank_of_level[level] do position = position + undelivered_in(streams[rank]) end
local entry = redis.call('XADD', stream, '*', 'id', job, 'job', ARGV[4], 't', ARGV[5], 'dl', ARGV[6])
redis.call('HSET', meta_key(job), 'entry', entry, 'epoch', 1, 'deliveries', 0, 'state', 'waiting', 'level', level)
wake()
return {'ok', position}
"#
);

/// Lease up to `ARGV[4]` jobs for consumer `ARGV[3]` with a TTL of `ARGV[5]` ms: handed
/// back jobs first (newest hand-back first), then new entries of the `high` stream, then
/// `normal`, then `low`, each in order. Jobs past their
/// deadline (`ARGV[6]`, the client's Unix ms) are acked and reported as dropped.
/// Answers `{taken, dropped, wake_id}` where taken items are `{job, payload, epoch,
/// deliveries}`, dropped items `{job, epoch}`, and `wake_id` is the last id of the
/// wake-up stream (to block on, with no lost wake-up).
const DEPLOYMENT_TAKE: &str = concat!(
    deployment_prelude!(),
    r#"
local consumer, n, ttl, client_now = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()
local taken, dropped = {}, {}
local function take(job, entry, flat, stream)
  local f = fields_of(flat)
  local meta = meta_key(job)
  if f['dl'] and f['dl'] ~= '' and client_now > tonumber(f['dl']) then
    local epoch = redis.call('HGET', meta, 'epoch') or '1'
    forget(job, entry, stream)
    dropped[#dropped + 1] = {job, epoch}
    return
  end
  local deliveries = redis.call('HINCRBY', meta, 'deliveries', 1)
  if not redis.call('HGET', meta, 'epoch') then redis.call('HSET', meta, 'epoch', 1) end
  redis.call('HSET', meta, 'entry', entry, 'state', 'leased', 'consumer', consumer, 'expires', now + ttl)
  redis.call('ZADD', KEYS[3], now + ttl, job)
  taken[#taken + 1] = {job, f['job'], redis.call('HGET', meta, 'epoch'), deliveries}
end
while #taken < n do
  local job = redis.call('LPOP', KEYS[2])
  if not job then break end
  local entry = redis.call('HGET', meta_key(job), 'entry')
  if entry then
    local stream = stream_of(job)
    local claimed = {}
    if redis.call('EXISTS', stream) == 1 then
      claimed = redis.call('XCLAIM', stream, ARGV[2], consumer, 0, entry)
    end
    if claimed[1] then take(job, entry, claimed[1][2], stream) else forget(job, entry, stream) end
  end
end
for _, stream in ipairs(streams) do
  if redis.call('EXISTS', stream) == 1 then
    while #taken < n do
      local reply = redis.call('XREADGROUP', 'GROUP', ARGV[2], consumer, 'COUNT', n - #taken, 'STREAMS', stream, '>')
      if not reply or #reply[1][2] == 0 then break end
      for _, e in ipairs(reply[1][2]) do
        take(fields_of(e[2])['id'], e[1], e[2], stream)
      end
    end
  end
end
local wake_id = '0-0'
local last = redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 1)
if last[1] then wake_id = last[1][1] end
return {taken, dropped, wake_id}
"#
);

/// Renew leases by `ARGV[3]` ms; `ARGV[4..]` are `job, consumer, epoch` triples.
/// Answers one 1 (held) or 0 per triple.
const DEPLOYMENT_RENEW: &str = concat!(
    deployment_prelude!(),
    r#"
local expires = now_ms() + tonumber(ARGV[3])
local held = {}
for i = 4, #ARGV, 3 do
  local job = ARGV[i]
  local m = redis.call('HMGET', meta_key(job), 'state', 'consumer', 'epoch')
  if holds(m, ARGV[i + 1], ARGV[i + 2]) then
    redis.call('HSET', meta_key(job), 'expires', expires)
    redis.call('ZADD', KEYS[3], expires, job)
    held[#held + 1] = 1
  else
    held[#held + 1] = 0
  end
end
return held
"#
);

/// Acknowledge job `ARGV[3]` under lease (`ARGV[4]` consumer, `ARGV[5]` epoch): XACK +
/// XDEL of its entry. Answers 1, or 0 when fenced.
const DEPLOYMENT_ACK: &str = concat!(
    deployment_prelude!(),
    r#"
local job = ARGV[3]
local m = redis.call('HMGET', meta_key(job), 'state', 'consumer', 'epoch', 'entry')
if not holds(m, ARGV[4], ARGV[5]) then return 0 end
forget(job, m[4])
return 1
"#
);

/// Hand job `ARGV[3]` back (lease `ARGV[4]` consumer, `ARGV[5]` epoch) to the head of the
/// queue with a bumped epoch; the hand-back does not count as a delivery. Its entry stays
/// in the consumer group's pending list (it is not acknowledged). Answers the new epoch,
/// or 0 when fenced.
const DEPLOYMENT_RELEASE: &str = concat!(
    deployment_prelude!(),
    r#"
local job = ARGV[3]
local meta = meta_key(job)
local m = redis.call('HMGET', meta, 'state', 'consumer', 'epoch')
if not holds(m, ARGV[4], ARGV[5]) then return 0 end
local epoch = redis.call('HINCRBY', meta, 'epoch', 1)
if redis.call('HINCRBY', meta, 'deliveries', -1) < 0 then redis.call('HSET', meta, 'deliveries', 0) end
redis.call('HSET', meta, 'state', 'waiting')
redis.call('HDEL', meta, 'consumer', 'expires')
redis.call('ZREM', KEYS[3], job)
redis.call('LPUSH', KEYS[2], job)
wake()
return epoch
"#
);

/// Redeliver jobs whose lease expired by the server's clock, bumping their epoch; a job
/// already delivered `ARGV[3]` times is moved to the dead-letter stream (capped near
/// `ARGV[4]` entries) and acknowledged instead. Answers `{requeued, dead}`: items
/// `{job, epoch}` and `{job, epoch, deliveries}`.
const DEPLOYMENT_RECLAIM: &str = concat!(
    deployment_prelude!(),
    r#"
local max_deliveries = tonumber(ARGV[3])
local requeued, dead = {}, {}
for _, job in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_ms())) do
  local meta = meta_key(job)
  local m = redis.call('HMGET', meta, 'state', 'entry', 'deliveries')
  if m[1] ~= 'leased' then
    redis.call('ZREM', KEYS[3], job)
  else
    local epoch = redis.call('HINCRBY', meta, 'epoch', 1)
    local deliveries = tonumber(m[3] or '0')
    if deliveries >= max_deliveries then
      local payload = ''
      local e = redis.call('XRANGE', stream_of(job), m[2], m[2])
      if e[1] then payload = fields_of(e[1][2])['job'] or '' end
      redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], '*', 'id', job, 'job', payload, 'deliveries', deliveries, 'epoch', epoch)
      forget(job, m[2])
      dead[#dead + 1] = {job, epoch, deliveries}
    else
      redis.call('HSET', meta, 'state', 'waiting')
      redis.call('HDEL', meta, 'consumer', 'expires')
      redis.call('ZREM', KEYS[3], job)
      redis.call('LPUSH', KEYS[2], job)
      requeued[#requeued + 1] = {job, epoch}
    end
  end
end
if #requeued > 0 then wake() end
return {requeued, dead}
"#
);

/// Remove job `ARGV[3]` from the queue if it is still waiting (cancel). Answers 1 if it
/// was removed.
const DEPLOYMENT_REMOVE_WAITING: &str = concat!(
    deployment_prelude!(),
    r#"
local job = ARGV[3]
local m = redis.call('HMGET', meta_key(job), 'state', 'entry')
if m[1] ~= 'waiting' then return 0 end
forget(job, m[2])
return 1
"#
);

/// Forget job `ARGV[3]` whatever its state (it ended on the job side: cancelled, or its
/// state expired). Answers 1 if there was anything to forget.
const DEPLOYMENT_FORGET: &str = concat!(
    deployment_prelude!(),
    r#"
local job = ARGV[3]
local entry = redis.call('HGET', meta_key(job), 'entry')
if not entry then return 0 end
forget(job, entry)
return 1
"#
);

/// Answers `{waiting, leased, oldest waiting enqueue time or ''}`; the oldest is the
/// earliest of the requeued list's head and each stream's first undelivered entry.
const DEPLOYMENT_DEPTH: &str = concat!(
    deployment_prelude!(),
    r#"
local w = waiting()
local oldest, shown = nil, ''
local function consider(e)
  if e[1] then
    local text = fields_of(e[1][2])['t']
    local t = tonumber(text)
    if t and (not oldest or t < oldest) then oldest, shown = t, text end
  end
end
local head = redis.call('LINDEX', KEYS[2], 0)
if head then
  local entry = redis.call('HGET', meta_key(head), 'entry')
  local stream = stream_of(head)
  if entry and redis.call('EXISTS', stream) == 1 then consider(redis.call('XRANGE', stream, entry, entry)) end
end
for _, stream in ipairs(streams) do
  if undelivered_in(stream) > 0 then
    consider(redis.call('XRANGE', stream, '(' .. last_delivered(stream), '+', 'COUNT', 1))
  end
end
return {w, redis.call('ZCARD', KEYS[3]), shown}
"#
);

/// 1-based position of job `ARGV[3]` in service order (requeued jobs, the undelivered
/// entries of higher priorities, then those up to it in its own stream), 0 if it is not
/// waiting.
const DEPLOYMENT_POSITION: &str = concat!(
    deployment_prelude!(),
    r#"
local job = ARGV[3]
local m = redis.call('HMGET', meta_key(job), 'state', 'entry')
if m[1] ~= 'waiting' then return 0 end
local index = redis.call('LPOS', KEYS[2], job)
if index then return index + 1 end
local level = level_of(job)
local stream = stream_of_level[level]
if redis.call('EXISTS', stream) == 0 then return 0 end
local position = redis.call('LLEN', KEYS[2])
for rank = 1, rank_of_level[level] - 1 do position = position + undelivered_in(streams[rank]) end
local ahead = redis.call('XRANGE', stream, '(' .. last_delivered(stream), m[2])
return position + #ahead
"#
);

/// Create a job's state (`ARGV[1]` deployment, `ARGV[2]` max age ms). Answers 0 if a job
/// with this id exists.
const JOB_CREATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'epoch', 1, 'status', 'waiting', 'cancelled', 0, 'deployment', ARGV[1], 'last_seq', 0, 'finished', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// A consumer starts a delivery (`ARGV[1]` epoch, `ARGV[2]` consumer, `ARGV[3]` the
/// cancelled event, `ARGV[4]` output ttl ms). Answers `{'ok', tokens, last_seq}`, or
/// `{'done'}` (the job ended meanwhile: cancelled), `{'gone'}` (no state) or `{'stale'}`.
const JOB_START: &str = concat!(
    job_prelude!(),
    r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone'} end
local s = redis.call('HMGET', KEYS[1], 'status', 'epoch', 'cancelled')
if s[1] == 'done' then return {'done'} end
local epoch = tonumber(ARGV[1])
if epoch < tonumber(s[2]) then return {'stale'} end
if s[3] == '1' then
  redis.call('HSET', KEYS[1], 'epoch', epoch)
  finish(epoch, ARGV[3], ARGV[4])
  return {'done'}
end
redis.call('HSET', KEYS[1], 'epoch', epoch, 'status', 'leased', 'consumer', ARGV[2])
return {'ok', redis.call('GET', KEYS[3]) or '', redis.call('HGET', KEYS[1], 'last_seq')}
"#
);

/// Append events under a lease: `ARGV[1]` epoch, `[2]` consumer, `[3]` the cancelled
/// event, `[4]` output ttl ms, then `json, terminal (0/1), tokens` triples. Answers
/// `{'ok', last_seq}`, `{'cancelled', deployment}`, `{'fenced'}` or `{'unknown'}`.
const JOB_APPEND: &str = concat!(
    job_prelude!(),
    r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {'unknown'} end
local s = redis.call('HMGET', KEYS[1], 'status', 'epoch', 'consumer', 'cancelled', 'deployment')
if s[4] == '1' then
  if s[1] ~= 'done' then finish(s[2], ARGV[3], ARGV[4]) end
  return {'cancelled', s[5]}
end
if s[1] ~= 'leased' or s[2] ~= ARGV[1] or s[3] ~= ARGV[2] then return {'fenced'} end
for i = 5, #ARGV, 3 do push(ARGV[1], ARGV[i], ARGV[i + 1] == '1', ARGV[i + 2]) end
if redis.call('HGET', KEYS[1], 'finished') == '1' then expire_all(ARGV[4]) else align_ttl() end
return {'ok', redis.call('HGET', KEYS[1], 'last_seq')}
"#
);

/// The deployment side requeued the job with epoch `ARGV[1]`: fence the older epoch.
/// A no-op if a delivery with that epoch already started.
const JOB_REQUEUE: &str = r#"
local s = redis.call('HMGET', KEYS[1], 'status', 'epoch')
if not s[1] or s[1] == 'done' then return 0 end
if tonumber(ARGV[1]) <= tonumber(s[2]) then return 0 end
redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'status', 'waiting')
return 1
"#;

/// End a job with a terminal event written by the queue (`ARGV[1]` epoch, `[2]` event,
/// `[3]` output ttl ms). Answers 0 if it had already ended.
const JOB_FAIL: &str = concat!(
    job_prelude!(),
    r#"
local s = redis.call('HMGET', KEYS[1], 'status', 'epoch')
if not s[1] or s[1] == 'done' then return 0 end
local epoch = math.max(tonumber(ARGV[1]), tonumber(s[2]))
redis.call('HSET', KEYS[1], 'epoch', epoch)
finish(epoch, ARGV[2], ARGV[3])
return 1
"#
);

/// The job was acknowledged: mark it done and start its output's expiry (`ARGV[1]` ms).
const JOB_DONE: &str = concat!(
    job_prelude!(),
    r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'done')
expire_all(ARGV[1])
return 1
"#
);

/// Cancel (`ARGV[1]` the cancelled event, `ARGV[2]` output ttl ms). Answers
/// `{'waiting', deployment}` (ended here; remove it from the queue), `{'leased'}` (flagged
/// for its writer) or `{'none'}` (unknown or already ended).
const JOB_CANCEL: &str = concat!(
    job_prelude!(),
    r#"
local s = redis.call('HMGET', KEYS[1], 'status', 'epoch', 'deployment')
if not s[1] or s[1] == 'done' then return {'none'} end
redis.call('HSET', KEYS[1], 'cancelled', 1)
if s[1] == 'waiting' then
  finish(s[2], ARGV[1], ARGV[2])
  return {'waiting', s[3]}
end
return {'leased'}
"#
);

/// The scripts, hashed once.
pub(super) struct Scripts {
    pub deployment_enqueue: Script,
    pub deployment_take: Script,
    pub deployment_renew: Script,
    pub deployment_ack: Script,
    pub deployment_release: Script,
    pub deployment_reclaim: Script,
    pub deployment_remove_waiting: Script,
    pub deployment_forget: Script,
    pub deployment_depth: Script,
    pub deployment_position: Script,
    pub job_create: Script,
    pub job_start: Script,
    pub job_append: Script,
    pub job_requeue: Script,
    pub job_fail: Script,
    pub job_done: Script,
    pub job_cancel: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            deployment_enqueue: Script::new(DEPLOYMENT_ENQUEUE),
            deployment_take: Script::new(DEPLOYMENT_TAKE),
            deployment_renew: Script::new(DEPLOYMENT_RENEW),
            deployment_ack: Script::new(DEPLOYMENT_ACK),
            deployment_release: Script::new(DEPLOYMENT_RELEASE),
            deployment_reclaim: Script::new(DEPLOYMENT_RECLAIM),
            deployment_remove_waiting: Script::new(DEPLOYMENT_REMOVE_WAITING),
            deployment_forget: Script::new(DEPLOYMENT_FORGET),
            deployment_depth: Script::new(DEPLOYMENT_DEPTH),
            deployment_position: Script::new(DEPLOYMENT_POSITION),
            job_create: Script::new(JOB_CREATE),
            job_start: Script::new(JOB_START),
            job_append: Script::new(JOB_APPEND),
            job_requeue: Script::new(JOB_REQUEUE),
            job_fail: Script::new(JOB_FAIL),
            job_done: Script::new(JOB_DONE),
            job_cancel: Script::new(JOB_CANCEL),
        }
    }
}
