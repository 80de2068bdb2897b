-- Fixed window counter with envoyproxy/ratelimit's semantics: every call adds its
-- hits (even when over the limit); over limit when the window's total exceeds it.
-- The window is computed from the Redis server clock so all replicas agree.
-- KEYS[1]  counter key (a hash: w = window index, n = hits in it)
-- ARGV[1]  limit (requests_per_unit)
-- ARGV[2]  cost (hits_addend)
-- ARGV[3]  window length in microseconds
-- ARGV[4]  "" for the server clock, else now in microseconds
-- returns {allowed 0|1, remaining, reset_after_us}
local limit = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local now
if ARGV[4] == "" then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[4])
end
local win = math.floor(now / window)
local cur = redis.call('HMGET', KEYS[1], 'w', 'n')
local n = 0
if tonumber(cur[1]) == win then n = tonumber(cur[2]) end
n = n + cost
local reset_after = (win + 1) * window - now
redis.call('HSET', KEYS[1], 'w', string.format('%.0f', win), 'n', string.format('%.0f', n))
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.ceil(reset_after / 1000)))
local remaining = limit - n
if remaining < 0 then remaining = 0 end
if n > limit then return {0, remaining, reset_after} end
return {1, remaining, reset_after}
