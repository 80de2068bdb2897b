-- Extend a lease that is still held (an expired or released one stays gone).
-- KEYS[1] lease set; ARGV[1] lease length us; ARGV[2] lease id; ARGV[3] "" or now us
-- returns {renewed 0|1, expires_at_us}
local ttl = tonumber(ARGV[1])
local now
if ARGV[3] == "" then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[3])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) then return {0, 0} end
local expires = now + ttl
redis.call('ZADD', KEYS[1], 'XX', string.format('%.0f', expires), ARGV[2])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.ceil((tonumber(last[2]) - now) / 1000)))
return {1, expires}
