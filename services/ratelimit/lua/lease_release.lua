-- Free a slot. Releasing an unknown or expired lease is harmless.
-- KEYS[1] lease set; ARGV[1] lease id; ARGV[2] "" or now us
-- returns {released 0|1, active}
local now
if ARGV[2] == "" then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[2])
end
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
return {removed, redis.call('ZCARD', KEYS[1])}
