"""The Lua scripts of the Redis backend: each runs atomically on the Redis server.

Every script that changes state and may be re-sent by redis-py's retry after a lost
reply takes a once-key, so a retry returns the first run's result. ``publish_call`` is
the one way to call PUBLISH_LUA: the backend and hubbub.client's emitters share it, so a
message published from a worker is the same as one published by a server.
"""

from __future__ import annotations

import secrets

from hubbub.hub.backends.base import Bucket

# Per-channel counters outlive the stream, so a client back after the stream expired is told.
META_EXTRA_TTL_S = 7 * 24 * 3600.0
# A hash of what hubbub.client's emitters published, by channel kind: no server sees those
# messages being published, so /metrics reads the count from here.
EMITTED_KEY = "emitted"

# A retry after a lost reply finds the first run's id under the call's once-key (KEYS[4]).
_PUBLISHED_FN = r"""
local function published()
  local done = redis.call('GET', KEYS[4])
  if not done then return nil end
  local e, s = string.match(done, '^(.*)-(%d+)$')
  return {e, tonumber(s)}
end
"""

# Assigns the id (epoch created once in KEYS[1], one global seq), appends, trims, publishes.
# Wire: 'm' json ['\n' origin] (compact JSON has no raw newline); live frames: 'l' json.
# ``emitted`` (a key), when given (an emitter's publish), counts it under ``kind``.
_PUBLISH_FN = r"""
local function publish(emitted, kind)
  local epoch = redis.call('HGET', KEYS[1], 'epoch')
  if not epoch then
    epoch = ARGV[1]
    redis.call('HSET', KEYS[1], 'epoch', epoch)
  end
  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  if redis.call('HGET', KEYS[3], 'epoch') ~= epoch then
    redis.call('DEL', KEYS[2], KEYS[3])
    redis.call('HSET', KEYS[3], 'epoch', epoch)
  end
  local json = '{"id":"' .. epoch .. '-' .. seq .. '",' .. string.sub(ARGV[2], 2)
  local size = tonumber(ARGV[3])
  local n = redis.call('XLEN', KEYS[2])
  if n == 0 then  -- the stream expired (quiet for HISTORY_TTL): everything up to 'last' is lost
    local last = redis.call('HGET', KEYS[3], 'last')
    if last then redis.call('HSET', KEYS[3], 'dropped', last) end
  elseif n >= size then
    local gone = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', n - size + 1)
    redis.call('HSET', KEYS[3], 'dropped', string.match(gone[#gone][1], '^%d+'))
  end
  local fields, wire = {'m', json}, 'm' .. json
  if ARGV[7] and ARGV[7] ~= '' then
    fields[3], fields[4], wire = 'o', ARGV[7], wire .. '\n' .. ARGV[7]
  end
  if emitted then redis.call('HINCRBY', emitted, kind, 1) end
  redis.call('XADD', KEYS[2], 'MAXLEN', size, seq .. '-0', unpack(fields))
  redis.call('HSET', KEYS[3], 'last', seq)
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
  redis.call('PUBLISH', ARGV[6], wire)
  redis.call('SET', KEYS[4], epoch .. '-' .. seq, 'PX', 60000)
  return {epoch, seq}
end
"""

# Token bucket {tokens, ts} in ``key`` on the server's clock: takes ``cost`` tokens and returns
# 0, or takes none and returns the seconds until they are there.
_TAKE_TOKEN_FN = """
local function take_token(key, rate, burst, cost)
  local t = redis.call('TIME')
  local now = t[1] + t[2] / 1000000
  local b = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens = tonumber(b[1]) or burst
  tokens = math.min(burst, tokens + math.max(0, now - (tonumber(b[2]) or now)) * rate)
  local wait = 0
  if tokens >= cost then tokens = tokens - cost else wait = (cost - tokens) / rate end
  redis.call('HSET', key, 'tokens', tostring(tokens), 'ts', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
  return wait
end
"""

# KEYS: clock, h:CH, m:CH, once[, emitted]; ARGV: new epoch, body, size, history TTL, meta
# TTL, topic[, origin[, the emitted kind]]. Returns {epoch, seq}.
PUBLISH_LUA = _PUBLISHED_FN + _PUBLISH_FN + """
return published() or publish(KEYS[5], ARGV[8])
"""

# PUBLISH_LUA after a token from KEYS[5]'s bucket (ARGV[8..10]: rate, burst, cost; ARGV[7]
# always given). Short of tokens: {'', seconds to wait as a string}, nothing published.
PUBLISH_WITHIN_LUA = _PUBLISHED_FN + _PUBLISH_FN + _TAKE_TOKEN_FN + """
local done = published()
if done then return done end
local wait = take_token(KEYS[5], tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]))
if wait > 0 then return {'', tostring(wait)} end
return publish(nil, nil)
"""

# A history read as one consistent snapshot, and one command (so reads pipeline with the rest):
# the clock's epoch, then per channel its counters (epoch, last, dropped) and its entries after
# seq ARGV[1] (ARGV[1] = '': the newest), at most ARGV[2]. KEYS: the clock, then m:CH, h:CH each.
HISTORY_LUA = """
local out = {redis.call('HGET', KEYS[1], 'epoch')}
for i = 2, #KEYS, 2 do
  out[#out + 1] = redis.call('HMGET', KEYS[i], 'epoch', 'last', 'dropped')
  if ARGV[1] == '' then
    out[#out + 1] = redis.call('XREVRANGE', KEYS[i + 1], '+', '-', 'COUNT', ARGV[2])
  else
    out[#out + 1] = redis.call('XRANGE', KEYS[i + 1], '(' .. ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])
  end
end
return out
"""

# Presence of one channel: KEYS[1] zset "len:user..connection" -> deadline, KEYS[2] user -> count.
# Returns {result, users whose last connection expired}; KEYS[3] (if given) makes add/remove
# idempotent, so a retry after a lost reply still reports the first run's first/last.
PRESENCE_LUA = """
if KEYS[3] then
  local done = redis.call('GET', KEYS[3])
  if done then return {tonumber(done), {}} end
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local function user_of(m)
  local colon = string.find(m, ':', 1, true)
  return string.sub(m, colon + 1, colon + tonumber(string.sub(m, 1, colon - 1)))
end
local function leave(user)
  if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
    redis.call('HDEL', KEYS[2], user)
    return 1
  end
  return 0
end
local gone = {}
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, m in ipairs(expired) do
  local u = user_of(m)
  if leave(u) == 1 then gone[#gone + 1] = u end
end
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) end
local op, ttl = ARGV[1], tonumber(ARGV[#ARGV])
local result = -1  -- add: the users now if the (first) user joined; remove: those left if it left
if op == 'add' then  -- op, then user, connection pairs (many when renewing), then the TTL
  for i = 2, #ARGV - 1, 2 do
    local user = ARGV[i]
    if redis.call('ZADD', KEYS[1], now + ttl, #user .. ':' .. user .. ARGV[i + 1]) == 1 then
      if redis.call('HINCRBY', KEYS[2], user, 1) == 1 then result = redis.call('HLEN', KEYS[2]) end
    end
  end
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
elseif op == 'remove' then
  local user = ARGV[2]
  if redis.call('ZREM', KEYS[1], #user .. ':' .. user .. ARGV[3]) == 1 and leave(user) == 1 then
    result = redis.call('HLEN', KEYS[2])
  end
else
  return {redis.call('HGETALL', KEYS[2]), gone}
end
if KEYS[3] then redis.call('SET', KEYS[3], result, 'PX', 60000) end
return {result, gone}
"""

# A token bucket (KEYS[1]; ARGV rate, burst[, cost]): the wait as a string (Lua ints truncate).
# KEYS[2] makes it idempotent: a retry after a lost reply returns the first run's wait.
TAKE_TOKEN_LUA = _TAKE_TOKEN_FN + """
local done = redis.call('GET', KEYS[2])
if done then return done end
local wait = tostring(take_token(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3] or 1)))
redis.call('SET', KEYS[2], wait, 'PX', 60000)
return wait
"""

# Live connections of a user: KEYS[1] zset connection -> deadline (ms on Redis' clock).
# add: ARGV op, ttl, limit, connection; KEYS[2] once-key. 1 if counted (or already), else 0.
# remove: ARGV op, ttl, connection (idempotent by nature: ZREM of a missing member does nothing).
# renew: KEYS one per user; ARGV op, ttl, then (key index, connection) pairs. XX: a connection
# removed while its renewal was on the way is not brought back to hold a slot for a TTL; one
# whose entry expired (Redis out of reach for a TTL) goes uncounted until it reconnects: the
# limit errs towards letting a user in, never towards refusing one for a ghost.
CONNECTIONS_LUA = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local op, ttl = ARGV[1], tonumber(ARGV[2])
if op == 'renew' then
  for i = 3, #ARGV, 2 do
    redis.call('ZADD', KEYS[tonumber(ARGV[i])], 'XX', now + ttl, ARGV[i + 1])
  end
  for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, ttl) end
  return 0
end
if op == 'remove' then
  redis.call('ZREM', KEYS[1], ARGV[3])
  return 0
end
local done = redis.call('GET', KEYS[2])
if done then return tonumber(done) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local result = 0
if redis.call('ZSCORE', KEYS[1], ARGV[4]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ttl)
  result = 1
end
redis.call('SET', KEYS[2], result, 'PX', 60000)
return result
"""

# An Idempotency-Key: KEYS[1] holds 'p:' fingerprint ':' nonce while a request runs (pending,
# expiring soon in case its process dies), then 'd:' fingerprint ':' response for the TTL.
# claim: ARGV fingerprint, nonce, pending ttl -> {state, response}; the nonce makes a retried
# claim (after a lost reply) find its own pending entry 'new' again, not 'pending'.
IDEMPOTENCY_CLAIM_LUA = """
local value = redis.call('GET', KEYS[1])
if not value then
  redis.call('SET', KEYS[1], 'p:' .. ARGV[1] .. ':' .. ARGV[2], 'PX', ARGV[3])
  return {'new', ''}
end
local n = #ARGV[1]
if string.sub(value, 3, 2 + n) ~= ARGV[1] then return {'mismatch', ''} end
if string.sub(value, 1, 1) == 'd' then return {'done', string.sub(value, 4 + n)} end
if string.sub(value, 4 + n) == ARGV[2] then return {'new', ''} end
return {'pending', ''}
"""

# release: KEYS[1], ARGV nonce: forgets a pending claim of this nonce (its request failed).
IDEMPOTENCY_RELEASE_LUA = """
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, 1) == 'p' and string.sub(value, -#ARGV[1] - 1) == ':' .. ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 0
"""


def publish_call(prefix: str, channel: str, body_json: str, *, history_size: int, history_ttl_s: float,
                 origin: str | None = None, emitted: bool = False,
                 bucket: Bucket | None = None) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of PUBLISH_LUA for ``body_json`` (an encoded body without its id);
    ``emitted``: published around the servers, counted in EMITTED_KEY. With ``bucket``:
    of PUBLISH_WITHIN_LUA, a token from it first."""
    ttl_ms = max(1, int(history_ttl_s * 1000))
    keys = [f"{prefix}clock", f"{prefix}h:{channel}", f"{prefix}m:{channel}",
            f"{prefix}once:{secrets.token_hex(8)}"]  # fixed per call: a retry re-sends it
    args: list[str | int] = [secrets.token_hex(4), body_json, history_size, ttl_ms,
                             int((history_ttl_s + META_EXTRA_TTL_S) * 1000), f"{prefix}c:{channel}"]
    if origin is not None or emitted or bucket is not None:
        args.append(origin or "")
    if emitted:
        keys.append(f"{prefix}{EMITTED_KEY}")
        args.append(channel.partition(":")[0])
    elif bucket is not None:  # the same key as take_token's bucket
        keys.append(f"{prefix}tb:{bucket.key}")
        args += [repr(bucket.rate_per_s), bucket.burst, bucket.cost]
    return keys, args
