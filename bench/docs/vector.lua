-- wrk: 10 nearest neighbours. POST /_nimbus/docs/vectors/query, SELECT TOP 10 c.id ORDER BY
-- VectorDistance (cosine) DESC, with one of 32 random query vectors of DIMS floats made per thread.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  local dims = tonumber(os.getenv("DIMS") or "384")
  math.randomseed(os.time() * 100 + tid)
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("NIMBUS_TOKEN")
  wrk.headers["Content-Type"] = "application/json"
  bodies = {}
  for b = 1, 32 do
    local v = {}
    for d = 1, dims do v[d] = string.format("%.6f", math.random() * 2 - 1) end
    bodies[b] = '{"query":"SELECT TOP 10 c.id FROM c ORDER BY VectorDistance(c.embedding, @q) DESC",'
      .. '"parameters":[{"name":"@q","value":[' .. table.concat(v, ",") .. ']}]}'
  end
  k = 0
end

function request()
  k = k % #bodies + 1
  return wrk.format("POST", "/_nimbus/docs/vectors/query", nil, bodies[k])
end
