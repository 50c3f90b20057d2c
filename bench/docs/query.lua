-- wrk: indexed equality. POST /_nimbus/docs/items/query, SELECT * FROM c WHERE c.group = @g, for
-- a random one of the ITEMS / 10 groups of exactly 10 items (each spread over 10 partitions, and no
-- partition key given, so the /group index is what narrows).
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  groups = math.floor(tonumber(os.getenv("ITEMS") or "10000") / 10)
  math.randomseed(os.time() * 100 + tid)
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("NIMBUS_TOKEN")
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  local body = string.format(
    '{"query":"SELECT * FROM c WHERE c.group = @g","parameters":[{"name":"@g","value":"g%d"}]}',
    math.random(0, groups - 1))
  return wrk.format("POST", "/_nimbus/docs/items/query", nil, body)
end
