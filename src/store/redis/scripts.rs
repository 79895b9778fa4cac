//! The Lua scripts the Redis store runs. Every script touches keys of one hash slot only, so
//! each runs unchanged on a single server and on a Redis Cluster node.
//!
//! A script may run twice for one call: when a connection breaks after Redis ran it and before
//! its reply came back, the cluster client sends it again (and so does the store on one
//! server). So a write's second run recognises its first and answers as the first did:
//! [`BUCKET_INSERT`] finds its own records, [`REPLACE`] and [`BUCKET_REPLACE`] their own new
//! value, [`REMOVE`] and [`BUCKET_REMOVE`] their own removal mark, [`COMPLETE_MANY`] its own
//! reply, and [`CLAIM_MANY`] returns the caller's own claim (which the caller takes as its own).
//! [`LEASE`] run twice leases a second block; the first block's serials are never used (a gap).

/// Leases serials. KEYS = counter, secret fingerprint, history; ARGV = size, the caller's
/// floor, the floor's epoch (Unix seconds), our fingerprint, the lead, the skew margin, the
/// least a lease may be cut to. Returns the leased block's start and end, or an error
/// `TRACKNUM_SECRET_MISMATCH <fingerprint>` or `TRACKNUM_AHEAD <µs to wait>`. The guards are
/// explained in the module above; a counter below the caller's floor has moved back as surely
/// as one on a node with another history. A lease the lead has no room for is cut to the room
/// there is, when that is at least the least (or the size): serials keep coming at the clock's
/// pace rather than stopping until all of a big block fits.
pub const LEASE: &str = r#"
local fp = redis.call('GET', KEYS[2])
if fp and fp ~= ARGV[4] then
  return redis.error_reply('TRACKNUM_SECRET_MISMATCH ' .. fp)
end
local t = redis.call('TIME')
local clock = (tonumber(t[1]) - tonumber(ARGV[3])) * 1000000 + tonumber(t[2])
local size = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local caller = tonumber(ARGV[2])
local lead = tonumber(ARGV[5])
local start = math.max(current, caller, clock)
local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)') or '?'
local jumped = redis.call('GET', KEYS[3]) ~= replid or current < caller
if jumped then
  start = math.max(start, clock + lead + tonumber(ARGV[6]))
elseif start + size > clock + lead then
  local least = math.min(size, tonumber(ARGV[7]))
  if start + least > clock + lead then
    return redis.error_reply('TRACKNUM_AHEAD ' .. string.format('%.0f', start + least - clock - lead))
  end
  size = clock + lead - start
end
if not fp then redis.call('SET', KEYS[2], ARGV[4]) end
if jumped then redis.call('SET', KEYS[3], replid) end
redis.call('SET', KEYS[1], string.format('%.0f', start + size))
return {start, start + size}
"#;

/// Compare-and-swap of a record with a key of its own: ARGV = expected value, new value, new
/// expiry (Unix ms). A record that already holds the new value is this swap, run before (every
/// new version carries its own `updated_at`, to the µs).
pub const REPLACE: &str = r#"
local current = redis.call('GET', KEYS[1])
if current == ARGV[2] then return 1 end
if current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[3])
return 1
"#;

/// Delete of a record with a key of its own, optionally conditional. KEYS = the record, its
/// removal mark (same slot); ARGV = '1' and the expected value, or '0' and ''; then this
/// call's token and how long the mark lives (ms). The mark, holding the token, lets the same
/// call run again know that it removed the record. Returns 1 removed, 0 missing, 2 changed.
pub const REMOVE: &str = r#"
local current = redis.call('GET', KEYS[1])
if not current then
  if redis.call('GET', KEYS[2]) == ARGV[3] then return 1 end
  return 0
end
if ARGV[1] == '1' and current ~= ARGV[2] then return 2 end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
return 1
"#;

/// Whether a new record's key holds exactly this record: then a `SET … NX` that found the key
/// taken found the same batch's own write, run before. ARGV = the JSON, its expiry (Unix ms).
/// The expiry is set again so that this is a write: a `WAIT` after it on the same connection
/// covers the first write too. Returns 1 ours, 0 not.
pub const OWN: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
"#;

/// Claims idempotency keys, each unless it holds a state: KEYS = keys of one hash slot (one
/// server: any keys), one for a single request or many for an import's order ids (a call per
/// key costs more than the work it does); ARGV = ttl ms, then a claim per key. Returns per key
/// what it held (false: claimed now).
pub const CLAIM_MANY: &str = r#"
local held = {}
for i = 1, #KEYS do
  local current = redis.call('GET', KEYS[i])
  if current then
    held[i] = current
  else
    redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ARGV[1])
    held[i] = false
  end
end
return held
"#;

/// Swaps claims for their replies: KEYS = keys of one hash slot (one server: any keys); ARGV =
/// ttl ms, then per key its claim and its reply. Returns per key 1 when the claim was ours (or
/// the key already holds this reply: this swap, run before), else 0.
pub const COMPLETE_MANY: &str = r#"
local ours = {}
for i = 1, #KEYS do
  local claim, reply = ARGV[2 * i], ARGV[2 * i + 1]
  local current = redis.call('GET', KEYS[i])
  if current == reply then
    ours[i] = 1
  elseif current == claim then
    redis.call('SET', KEYS[i], reply, 'PX', ARGV[1])
    ours[i] = 1
  else
    ours[i] = 0
  end
end
return ours
"#;

/// Drop our claim: ARGV = claim.
pub const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"#;

/// The Lua of `extend(key, at)`: makes `key` live until at least `at` (Unix ms), never shorter,
/// so that a bucket lives as long as its longest-lived record. From Redis 7.0 on, one
/// `PEXPIREAT … GT` does it, but for a key with no expiry yet (GT leaves those alone); on 6.2,
/// which refuses GT, the key's expiry is read and compared here, and within a millisecond of
/// it the key is left as it is.
macro_rules! extend_lua {
    () => {
        r#"
local function extend(key, at)
  local ok, raised = pcall(redis.call, 'PEXPIREAT', key, at, 'GT')
  if ok and raised == 1 then return end
  local ttl = redis.call('PTTL', key)
  if ttl >= 0 then
    if ok then return end
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    if now + ttl + 1 >= tonumber(at) then return end
  end
  redis.call('PEXPIREAT', key, at)
end
"#
    };
}

/// The Lua of `held(key, field)`, a record as its bucket keeps it (its field, then its tail in
/// the field named `+` and the field's name: see [`super::buckets`]), or false; and of
/// `keep(key, field, value, split)`, which stores `value` so, a tail past `split` bytes (and
/// removes a tail it no longer has).
macro_rules! parts_lua {
    () => {
        r#"
local function held(key, field)
  local parts = redis.call('HMGET', key, field, '+' .. field)
  if not parts[1] then return false end
  if parts[2] then return parts[1] .. parts[2] end
  return parts[1]
end
local function keep(key, field, value, split)
  if #value > split then
    redis.call('HSET', key, field, string.sub(value, 1, split), '+' .. field, string.sub(value, split + 1))
  else
    redis.call('HSET', key, field, value)
    redis.call('HDEL', key, '+' .. field)
  end
end
"#
    };
}

/// Stores the records of one bucket ([`super::buckets`]) unless their fields hold other
/// records. KEYS = the bucket; ARGV = the latest expiry among the records (Unix ms), their
/// count n, their n fields, for each how many parts it has (1, or 2 with a tail), then each
/// record's parts as pairs of field and value. Returns n when every record was stored, else per
/// record 1 stored, 0 taken. A record found exactly as given is this write, run before (every
/// record carries its own creation time, to the µs): stored, and written again, so that a
/// `WAIT` after it on the same connection covers the first write too. A new bucket (most of a
/// batch's) takes one `HSET` and its expiry; one that exists adds an `HMGET` of the fields, which
/// are free but for a write sent again. A call per record would cost more than the script, and
/// the short answer saves Redis a reply of n numbers (about a fifth of the script's time in
/// batches of 1,000).
pub const BUCKET_INSERT: &str = concat!(
    extend_lua!(),
    r#"
local n = tonumber(ARGV[2])
local new = redis.call('EXISTS', KEYS[1]) == 0
local current = {}
if not new then current = redis.call('HMGET', KEYS[1], unpack(ARGV, 3, n + 2)) end
local taken = false
for i = 1, n do
  if current[i] then taken = true end
end
if not taken then
  redis.call('HSET', KEYS[1], unpack(ARGV, 2 * n + 3))
  if new then redis.call('PEXPIREAT', KEYS[1], ARGV[1]) else extend(KEYS[1], ARGV[1]) end
  return n
end
local stored = {}
local set = {}
local at = 2 * n + 3
for i = 1, n do
  stored[i] = 1
  local count = tonumber(ARGV[n + 2 + i])
  local given = ARGV[at + 1]
  if count == 2 then given = given .. ARGV[at + 3] end
  if current[i] then
    local tail = redis.call('HGET', KEYS[1], '+' .. ARGV[at])
    if (tail and current[i] .. tail or current[i]) ~= given then stored[i] = 0 end
  end
  if stored[i] == 1 then
    for j = at, at + 2 * count - 1 do set[#set + 1] = ARGV[j] end
  end
  at = at + 2 * count
end
if #set == 0 then return stored end
redis.call('HSET', KEYS[1], unpack(set))
extend(KEYS[1], ARGV[1])
return stored
"#
);

/// Compare-and-swap of a record in its bucket: ARGV = its field, the expected value, the new
/// value, the new expiry (Unix ms), the longest part a field holds. Returns 1 swapped (or the
/// record already is the new value: this swap, run before), 0 changed, 2 not in the bucket (the
/// caller looks for a key of its own). The caller has checked that the expected record had not
/// expired.
pub const BUCKET_REPLACE: &str = concat!(
    extend_lua!(),
    parts_lua!(),
    r#"
local current = held(KEYS[1], ARGV[1])
if not current then return 2 end
if current == ARGV[3] then return 1 end
if current ~= ARGV[2] then return 0 end
keep(KEYS[1], ARGV[1], ARGV[3], tonumber(ARGV[5]))
extend(KEYS[1], ARGV[4])
return 1
"#
);

/// Removes a record from its bucket while it is the expected value. KEYS = the bucket, the
/// removal's mark (same slot); ARGV = the field, the expected value, this call's token, how
/// long the mark lives (ms). The mark lets the same call, run again, know that it removed the
/// record. Returns 1 removed, 2 changed, 3 not in the bucket (the caller looks for a key of
/// its own).
pub const BUCKET_REMOVE: &str = concat!(
    parts_lua!(),
    r#"
local current = held(KEYS[1], ARGV[1])
if not current then
  if redis.call('GET', KEYS[2]) == ARGV[3] then return 1 end
  return 3
end
if current ~= ARGV[2] then return 2 end
redis.call('HDEL', KEYS[1], ARGV[1], '+' .. ARGV[1])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
return 1
"#
);
