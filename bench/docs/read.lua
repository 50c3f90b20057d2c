-- wrk: point read. GET /_nimbus/docs/items/items/r<i>?pk=p<i % 100> over the ITEMS preloaded items.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  items = tonumber(os.getenv("ITEMS") or "10000")
  math.randomseed(os.time() * 100 + tid)
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("NIMBUS_TOKEN")
end

function request()
  local i = math.random(0, items - 1)
  return wrk.format("GET", string.format("/_nimbus/docs/items/items/r%d?pk=p%d", i, i % 100))
end
