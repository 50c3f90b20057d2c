-- wrk: point insert. POST /_nimbus/docs/items/items, a new item per request: ids unique per
-- thread (wrk's threads are numbered in setup) and per run (BENCH_RUN), groups of 10.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  run = os.getenv("BENCH_RUN") or tostring(os.time())
  n = 0
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("NIMBUS_TOKEN")
  wrk.headers["Content-Type"] = "application/json"
end

local text = "the quick brown fox jumps over the lazy dog, then it rests a while"

function request()
  n = n + 1
  local id = string.format("w%s-%d-%d", run, tid, n)
  local body = string.format('{"id":"%s","pk":"p%d","group":"w%s-%d-%d","n":%d,"text":"%s"}',
    id, n % 100, run, tid, math.floor(n / 10), n, text)
  return wrk.format("POST", "/_nimbus/docs/items/items", nil, body)
end
