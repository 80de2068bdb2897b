-- GCRA (generic cell rate algorithm): a token bucket kept as one number, so there
-- are no window boundaries to burst across. The state is the bucket's "debt":
-- how far the theoretical arrival time (TAT) lies ahead of the last update, in
-- microseconds. Storing debt relative to an integer timestamp (instead of an
-- absolute TAT) keeps sub-microsecond precision in Lua's doubles, so fractional
-- emission intervals (e.g. 7 per hour) never drift into admitting an extra hit.
-- KEYS[1]  bucket key (hash: t = last update us, d = debt us)
-- ARGV[1]  emission interval in microseconds (unit length / requests_per_unit)
-- ARGV[2]  capacity (burst) in hits
-- ARGV[3]  cost of this call in hits (hits_addend)
-- ARGV[4]  "" to use the Redis server clock (all replicas agree), else now in microseconds
-- returns {allowed 0|1, remaining, retry_after_us, reset_after_us, next_hit_us}
--   retry_after_us: until this cost would fit (-1: never, cost > capacity)
--   reset_after_us: until the bucket is full again
--   next_hit_us:    until at least one hit fits (0: one fits now)
local emission = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now
if ARGV[4] == "" then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[4])
end
-- 1 ns of slack absorbs floating-point rounding in sums of fractional intervals.
local slack = 0.001
local state = redis.call('HMGET', KEYS[1], 't', 'd')
local debt = 0
if state[1] then
  debt = tonumber(state[2]) - (now - tonumber(state[1]))
  if debt < 0 then debt = 0 end
end
local burst_offset = emission * capacity
local new_debt = debt + emission * cost
local function next_hit(d)
  local v = d + emission - burst_offset
  if v <= slack then return 0 end
  return math.ceil(v)
end
if new_debt > burst_offset + slack then
  local remaining = math.floor((burst_offset - debt + slack) / emission)
  local retry_after = math.ceil(new_debt - burst_offset)
  if cost > capacity then retry_after = -1 end
  return {0, remaining, retry_after, math.ceil(debt), next_hit(debt)}
end
redis.call('HSET', KEYS[1], 't', string.format('%.0f', now), 'd', string.format('%.6f', new_debt))
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.ceil(new_debt / 1000) + 1))
local remaining = math.floor((burst_offset - new_debt + slack) / emission)
return {1, remaining, 0, math.ceil(new_debt), next_hit(new_debt)}
