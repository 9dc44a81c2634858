-- Bench: wrk script for `POST /v1/messages`, bounded by a request count (see bench/README.md).
--
-- Usage (accept.py builds this command line):
--   wrk -t1 -c64 -d120s --latency -s bench/post_message.lua http://127.0.0.1:PORT \
--       -- <requests> <api key> <first recipient number> <cap seconds> [email|sms]
--
-- Why it is written this way:
-- * Exactly <requests> requests are sent, and the thread stops once every one of them has been
--   answered. Stopping on a response count alone would abandon up to C-1 requests already on
--   the wire; the server would still commit them, and the rows-vs-201s durability check would
--   be off by that much. So wrk's delay() hook hands out <requests> send slots; every later
--   send is parked for longer than the time cap and never leaves the client.
-- * wrk's main thread sleeps for the whole -d duration even after every worker thread has
--   called wrk.thread:stop() (wg/wrk#281). The thread therefore sends SIGINT to its own process
--   (LuaJIT FFI), which ends that sleep early, exactly like pressing Ctrl-C; done() still runs.
--   -d stays the time cap: a run whose answers never all arrive ends there, marked incomplete.
-- * Throughput is timed here, from the first send slot to the last answer (CLOCK_MONOTONIC),
--   not from wrk's total runtime, which also covers connecting and shutting down.
-- * done() prints one line, "BENCH_JSON {...}", for accept.py to parse.

local ffi = require("ffi")

ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
int getpid(void);
int kill(int pid, int sig);
]]

local CLOCK_MONOTONIC = 1
local SIGINT = 2

local function now_us()
  local ts = ffi.new("bench_timespec")
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

-- Per-thread state. Globals (not locals) so that done(), in wrk's main Lua state, can read
-- them with thread:get().
limit = 0
slots = 0
answered = 0
statuses = {}
started_us = 0
finished_us = 0
complete = false

local api_key = ""
local channel = "email"
local next_number = 0
local park_ms = 0

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  limit = tonumber(args[1])
  api_key = args[2]
  next_number = tonumber(args[3])
  -- Longer than the run can last, so a parked send never fires.
  park_ms = (tonumber(args[4]) + 3600) * 1000
  channel = args[5] or "email"
  wrk.method = "POST"
  wrk.path = "/v1/messages"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. api_key
end

function delay()
  -- Called once before every send (wrk calls it only when the script defines it).
  if slots == 0 then
    started_us = now_us()
  end
  slots = slots + 1
  if slots > limit then
    return park_ms
  end
  return 0
end

function request()
  -- wrk also calls this once at start-up to check the request, without sending it, so the
  -- send budget lives in delay(), not here; this only makes each recipient different.
  next_number = next_number + 1
  local body
  if channel == "sms" then
    -- US numbers +1 415 2xx xxxx whose last two digits stay below 90: the simulators decide
    -- outcomes by 90-95, and every message of the benchmark is meant to be delivered.
    local subscriber = 2000000 + math.floor(next_number / 90) * 100 + next_number % 90
    body = '{"channel":"sms","to":"+1415' .. subscriber .. '","body":"Your code is 123456"}'
  else
    body = '{"channel":"email","to":"user' .. next_number
      .. '@example.com","subject":"Bench","body":"Hello"}'
  end
  return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  answered = answered + 1
  if answered == limit then
    finished_us = now_us()
    complete = true
    wrk.thread:stop()
    ffi.C.kill(ffi.C.getpid(), SIGINT)
  end
end

local function json_number(value)
  return string.format("%.0f", value)
end

function done(summary, latency, requests)
  local total_answered = 0
  local total_limit = 0
  local merged = {}
  local elapsed_us = 0
  local all_complete = true
  for _, thread in ipairs(threads) do
    total_answered = total_answered + thread:get("answered")
    total_limit = total_limit + thread:get("limit")
    local span = thread:get("finished_us") - thread:get("started_us")
    if not thread:get("complete") then
      all_complete = false
      span = 0
    end
    if span > elapsed_us then
      elapsed_us = span
    end
    for key, count in pairs(thread:get("statuses")) do
      merged[key] = (merged[key] or 0) + count
    end
  end
  local status_parts = {}
  for key, count in pairs(merged) do
    table.insert(status_parts, string.format('"%s":%d', key, count))
  end
  local errors = summary.errors
  local out = string.format(
    '{"requests":%d,"answered":%d,"limit":%d,"complete":%s,"elapsed_us":%s,'
      .. '"wrk_duration_us":%s,"statuses":{%s},'
      .. '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},'
      .. '"latency_us":{"min":%s,"mean":%s,"p50":%s,"p90":%s,"p99":%s,"p999":%s,"max":%s}}',
    summary.requests, total_answered, total_limit, tostring(all_complete),
    json_number(elapsed_us), json_number(summary.duration), table.concat(status_parts, ","),
    errors.connect, errors.read, errors.write, errors.timeout,
    json_number(latency.min), json_number(latency.mean),
    json_number(latency:percentile(50)), json_number(latency:percentile(90)),
    json_number(latency:percentile(99)), json_number(latency:percentile(99.9)),
    json_number(latency.max)
  )
  io.write("BENCH_JSON " .. out .. "\n")
end
