-- Take a concurrency slot: a sorted set of lease ids scored by expiry time, so
-- slots of holders that died free themselves when their lease runs out.
-- KEYS[1]  lease set
-- ARGV[1]  max concurrent
-- ARGV[2]  lease length in microseconds
-- ARGV[3]  lease id
-- ARGV[4]  "1" to record the lease even when full (shadow mode), else "0"
-- ARGV[5]  "" for the server clock, else now in microseconds
-- returns {granted 0|1, active, expires_at_us, now_us}
local max = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local now
if ARGV[5] == "" then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[5])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
local active = redis.call('ZCARD', KEYS[1])
if active >= max and ARGV[4] ~= "1" then return {0, active, 0, now} end
local expires = now + ttl
redis.call('ZADD', KEYS[1], string.format('%.0f', expires), ARGV[3])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.ceil((tonumber(last[2]) - now) / 1000)))
local granted = 1
if active >= max then granted = 0 end
return {granted, active + 1, expires, now}
